// Test-only helpers that check generated tables with the real ACPICA tools: `iasl -d`
// disassembles a table, `iasl` compiles ASL or data-table source back to binary.
//
// A missing iasl is a test failure (install Debian's acpica-tools), never a skip: these checks
// are the proof that the guest's ACPICA will parse what we emit.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/testing/host_tools.h"

namespace clonevm::acpi::iasl {

inline constexpr char kIaslMissing[] =
    "iasl not found (looked in PATH and /usr/bin/iasl): install Debian's acpica-tools";

using ::clonevm::host_tools::CommandResult;
using ::clonevm::host_tools::RunCommand;

// A private directory for this layer's tests, removed on destruction.
class TempDir : public ::clonevm::host_tools::TempDir {
 public:
  TempDir() : ::clonevm::host_tools::TempDir("clone-acpi") {}
};

// The iasl binary to run, or "" if there is none.
inline std::string IaslPath() {
  CommandResult which = RunCommand("command -v iasl");
  if (which.exit_code == 0 && !which.output.empty()) {
    return which.output.substr(0, which.output.find('\n'));
  }
  if (::access("/usr/bin/iasl", X_OK) == 0) return "/usr/bin/iasl";
  return "";
}

inline void WriteBinary(const std::string& path, std::span<const uint8_t> bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

inline std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline std::vector<uint8_t> ReadBinary(const std::string& path) {
  const std::string text = ReadText(path);
  return std::vector<uint8_t>(text.begin(), text.end());
}

inline bool ContainsIgnoringCase(std::string_view haystack, std::string_view needle) {
  auto lower = [](char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); };
  auto it = std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end(),
                        [&](char a, char b) { return lower(a) == lower(b); });
  return it != haystack.end();
}

// Runs iasl with `args` inside `dir`.
inline CommandResult RunIasl(const TempDir& dir, const std::string& args) {
  const std::string iasl = IaslPath();
  if (iasl.empty()) {
    ADD_FAILURE() << kIaslMissing;
    return {};
  }
  return RunCommand("cd '" + dir.path().string() + "' && '" + iasl + "' " + args);
}

// Writes `table` to <name>.dat, disassembles it with `iasl -d` and returns <name>.dsl. Adds a
// failure if iasl fails or reports any error, warning, or bad checksum about the table.
inline std::string Disassemble(const TempDir& dir, const std::string& name, std::span<const uint8_t> table) {
  WriteBinary(dir.File(name + ".dat"), table);
  const CommandResult run = RunIasl(dir, "-d " + name + ".dat");
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_FALSE(ContainsIgnoringCase(run.output, "warning")) << run.output;
  EXPECT_FALSE(ContainsIgnoringCase(run.output, "error")) << run.output;
  const std::string dsl = ReadText(dir.File(name + ".dsl"));
  EXPECT_FALSE(dsl.empty()) << "iasl wrote no " << name << ".dsl\n" << run.output;
  for (std::string_view bad : {"****", "incorrect", "warning", "error"}) {
    EXPECT_FALSE(ContainsIgnoringCase(dsl, bad)) << "'" << bad << "' in " << name << ".dsl:\n" << dsl;
  }
  return dsl;
}

// Compiles <name>.dsl (ASL or data-table source) in `dir` and returns <name>.aml. Adds a failure
// unless iasl reports a clean compile: no errors, warnings or remarks.
inline std::vector<uint8_t> Compile(const TempDir& dir, const std::string& name) {
  const CommandResult run = RunIasl(dir, name + ".dsl");
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("Compilation successful. 0 Errors, 0 Warnings, 0 Remarks"), std::string::npos)
      << run.output;
  return ReadBinary(dir.File(name + ".aml"));
}

// Number of non-overlapping occurrences of `needle` in `text`.
inline size_t CountOccurrences(std::string_view text, std::string_view needle) {
  size_t count = 0;
  for (size_t pos = text.find(needle); pos != std::string_view::npos; pos = text.find(needle, pos + needle.size())) {
    ++count;
  }
  return count;
}

}  // namespace clonevm::acpi::iasl
