// Exit statuses of the clone binary (documented in README.md).
#pragma once

namespace clonevm::cli {

inline constexpr int kExitOk = 0;            // success; for `run`: the guest powered off
inline constexpr int kExitError = 1;         // the VMM failed (bad image, KVM error, ...)
inline constexpr int kExitUsage = 2;         // bad command line
inline constexpr int kExitGuestReboot = 3;   // the guest asked to reboot
inline constexpr int kExitGuestCrash = 4;    // triple fault, failed VM entry, KVM internal error
inline constexpr int kExitSignalBase = 128;  // + signal number: stopped by SIGINT/SIGTERM

}  // namespace clonevm::cli
