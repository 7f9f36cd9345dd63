#include "cli/main_cli.h"

int main(int argc, char** argv) { return clonevm::cli::Main(argc, argv); }
