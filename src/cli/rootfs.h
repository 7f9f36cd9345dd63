// `clone rootfs create`: build a bootable ext4 disk image (raw or qcow2) for `clone run --rootfs`.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "base/result.h"
#include "image/rootfs_create.h"

namespace clonevm::cli {

struct RootfsOptions {
  std::string from_dir;
  std::string from_tar;
  std::string from_oci;  // an OCI image layout directory
  std::string distro;    // "debian" or "ubuntu"
  std::string suite;     // empty: the distro's default (kDefaultDebianSuite, kDefaultUbuntuSuite)
  std::string mirror;    // empty: the distro's default (kDefaultDebianMirror, kDefaultUbuntuMirror)
  std::string size;      // "512M", "1G", "2048" (MiB)
  std::string output;
  std::string format = "raw";
  std::string hostname = kDefaultRootfsHostname;
  bool force = false;
  std::string agent;          // --agent PATH; empty: clone-agent next to the clone binary, if there
  std::string root_password;  // --root-password locked|none|HASH; empty: the default (RootPasswordField)
};

void AddRootfsCommand(CLI::App& app, RootfsOptions& options);

// Turns the command line into library options (no file access); errors are usage errors.
[[nodiscard]] Result<RootfsCreateOptions> ToRootfsCreateOptions(const RootfsOptions& options);

// Returns the process exit status: 0, 1 (error), 2 (usage), 128+N (stopped by signal N).
int RootfsCreateCommand(const RootfsOptions& options);

}  // namespace clonevm::cli
