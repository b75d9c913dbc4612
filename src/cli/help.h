// The command line's help and errors: option values named for people
// (`--table FILE`, `--tls off|on|require`) instead of CLI11's type names and
// validator descriptions, usage errors that exit 2 with the verbs there are,
// and --version.
#pragma once

#include <optional>
#include <string>

#include <CLI/CLI.hpp>

namespace strata::cli {

// "strata 0.1.0 (git v0.1.0-12-gabcdef0)": CMake's project version and, when
// the build had a git checkout, `git describe` at build time.
std::string version_string();

// Installs the formatter and --version on `app`; call before adding
// subcommands (they copy the formatter).
void setup_help(CLI::App& app);

// Parses the command line. Nothing: go on. A value: exit with it (0 after
// --help or --version; 2 after a usage error, reported on stderr with the
// verbs of the command it was in).
std::optional<int> parse_command_line(CLI::App& app, int argc, char** argv);

}  // namespace strata::cli
