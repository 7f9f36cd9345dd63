#include "daemon/record.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "base/fd.h"
#include "base/json.h"

namespace clonevm::daemon {
namespace fs = std::filesystem;
namespace {

Result<void> WriteAtomically(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  Fd file(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!file) return FailErrno("cannot write", tmp);
  CLONE_TRY_VOID(WriteAll(file.get(), text.data(), text.size()));
  if (::rename(tmp.c_str(), path.c_str()) != 0) return FailErrno("cannot rename", tmp);
  return {};
}

Result<std::optional<ExitInfo>> ReadExit(const JsonReader& r) {
  auto child = r.Child("last_exit");
  if (!child) return std::optional<ExitInfo>();
  CLONE_TRY_VOID(child->Expect({"status", "how", "at_unix"}));
  ExitInfo exit;
  exit.status = CLONE_TRY(child->OptUint<int>("status", 0, 255));
  exit.how = CLONE_TRY(child->String("how"));
  exit.at_unix = CLONE_TRY(child->UintOr<int64_t>("at_unix", 0));
  return std::optional<ExitInfo>(exit);
}

}  // namespace

nlohmann::json ExitToJson(const ExitInfo& exit) {
  nlohmann::json j = {{"how", exit.how}, {"at_unix", exit.at_unix}};
  j["status"] = exit.status ? nlohmann::json(*exit.status) : nlohmann::json(nullptr);
  return j;
}

nlohmann::json RecordToJson(const VmRecord& r) {
  nlohmann::json j = {{"version", kRecordVersion},
                      {"id", r.id},
                      {"owner", r.owner},
                      {"restart", RestartPolicyName(r.restart)},
                      {"want_running", r.want_running},
                      {"pid", r.pid},
                      {"pid_start", r.pid_start},
                      {"created_unix", r.created_unix},
                      {"restarts", r.restarts}};
  if (r.template_name.empty()) {
    j["spec"] = spec::SpecToJson(r.spec);
  } else {
    j["template"] = r.template_name;
    j["overrides"] = spec::OverridesToJson(r.overrides);
  }
  if (r.last_exit) {
    j["last_exit"] = ExitToJson(*r.last_exit);
  }
  return j;
}

Result<VmRecord> RecordFromJson(const nlohmann::json& j) {
  JsonReader r(j);
  CLONE_TRY_VOID(r.Expect({"version", "id", "owner", "restart", "want_running", "pid", "pid_start", "created_unix",
                           "restarts", "spec", "template", "overrides", "last_exit"}));
  CLONE_TRY_VOID(r.Version(kRecordVersion, "VM record"));
  VmRecord record;
  record.id = CLONE_TRY(r.String("id", 64));
  if (!spec::IsValidVmId(record.id)) return Fail("id '{}': not a VM id", record.id);
  record.owner = CLONE_TRY(r.Uint<uid_t>("owner"));
  auto restart = ParseRestartPolicy(CLONE_TRY(r.String("restart", 32)));
  if (!restart) return Fail("restart: {}", restart.error().message());
  record.restart = *restart;
  record.want_running = CLONE_TRY(r.Bool("want_running"));
  record.pid = CLONE_TRY(r.UintOr<pid_t>("pid", 0));
  record.pid_start = CLONE_TRY(r.UintOr<uint64_t>("pid_start", 0));
  record.created_unix = CLONE_TRY(r.UintOr<int64_t>("created_unix", 0));
  record.restarts = CLONE_TRY(r.UintOr<uint32_t>("restarts", 0));
  if (auto name = CLONE_TRY(r.OptString("template", 128))) {
    record.template_name = *name;
    CLONE_TRY_VOID(CheckTemplateName(record.template_name));
    const nlohmann::json* overrides = r.Find("overrides");
    if (overrides == nullptr) return Fail("overrides: required with template");
    auto parsed = spec::OverridesFromJson(*overrides);
    if (!parsed) return Fail("overrides.{}", parsed.error().message());
    record.overrides = std::move(*parsed);
  } else {
    const nlohmann::json* s = r.Find("spec");
    if (s == nullptr) return Fail("spec: required without template");
    auto parsed = spec::SpecFromJson(*s);
    if (!parsed) return Fail("spec.{}", parsed.error().message());
    record.spec = std::move(*parsed);
  }
  record.last_exit = CLONE_TRY(ReadExit(r));
  return record;
}

std::optional<uint64_t> ProcessStartTime(pid_t pid) {
  if (pid <= 0) return std::nullopt;
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // pid (comm) state ...: comm may hold spaces and parentheses, so fields count from the last ')'.
  size_t close = text.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream fields(text.substr(close + 2));
  std::string field;
  for (int i = 3; i <= 22 && fields >> field; ++i) {
    if (i == 3 && field == "Z") return std::nullopt;  // a zombie has ended
    if (i == 22) return std::stoull(field);
  }
  return std::nullopt;
}

bool ProcessAlive(const VmRecord& record) {
  auto start = ProcessStartTime(record.pid);
  return start && *start == record.pid_start;
}

Result<void> RecordStore::Init() const {
  for (const std::string& dir : {state_dir_, state_dir_ + "/vms", TemplatesDir()}) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return Fail("cannot create {}: {}", dir, ec.message());
  }
  if (::chmod(state_dir_.c_str(), 0700) != 0) return FailErrno("chmod", state_dir_);
  return {};
}

Result<void> RecordStore::Save(const VmRecord& record) const {
  std::string dir = VmDir(record.id);
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return FailErrno("cannot create", dir);
  return WriteAtomically(dir + "/vm.json", RecordToJson(record).dump(2) + "\n");
}

std::vector<VmRecord> RecordStore::LoadAll(std::vector<std::string>* errors) const {
  std::vector<VmRecord> records;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(state_dir_ + "/vms", ec)) {
    std::string path = entry.path().string() + "/vm.json";
    auto text = ReadFile(path);
    if (!text) {
      errors->push_back(fmt::format("{}: {}", path, text.error().message()));
      continue;
    }
    auto json = ParseJsonObject(*text, path);
    auto record = json ? RecordFromJson(*json) : Result<VmRecord>(tl::unexpected(json.error()));
    if (!record) {
      errors->push_back(fmt::format("{}: {}", path, record.error().message()));
      continue;
    }
    if (record->id != entry.path().filename().string()) {
      errors->push_back(fmt::format("{}: id '{}' is not its directory's name", path, record->id));
      continue;
    }
    records.push_back(std::move(*record));
  }
  std::sort(records.begin(), records.end(), [](const VmRecord& a, const VmRecord& b) { return a.id < b.id; });
  return records;
}

void RecordStore::Remove(const std::string& id) const {
  std::error_code ec;
  fs::remove_all(VmDir(id), ec);
}

std::optional<ExitInfo> RecordStore::TakeExitFile(const std::string& id) const {
  std::string path = ExitFile(id);
  auto text = ReadFile(path);
  if (!text) return std::nullopt;
  ::unlink(path.c_str());
  auto json = ParseJsonObject(*text, path);
  if (!json) return std::nullopt;
  JsonReader r(*json);
  auto status = r.OptUint<int>("status", 0, 255);
  auto how = r.String("how");
  if (!status || !how) return std::nullopt;
  return ExitInfo{*status, *how, 0};
}

}  // namespace clonevm::daemon
