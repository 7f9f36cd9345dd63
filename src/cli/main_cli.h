// The clone command line: subcommand dispatch. Main() returns the process exit status.
#pragma once

namespace clonevm::cli {

int Main(int argc, char** argv);

}  // namespace clonevm::cli
