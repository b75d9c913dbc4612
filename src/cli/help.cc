#include "cli/help.h"

#include <fmt/core.h>

#include <map>

#include "strata_version.h"

namespace strata::cli {
namespace {

// What an option's value is, for the left column of --help.
std::string metavar(const CLI::Option* opt) {
  static const std::map<std::string, std::string> kByName = {
      {"table", "FILE"},        {"file", "PATH"},          {"unix", "PATH"},
      {"tcp", "HOST:PORT"},     {"metrics", "HOST:PORT"},  {"control", "SOCKET"},
      {"pidfile", "PATH"},      {"state-dir", "DIR"},      {"allow-path", "DIR"},
      {"fuse", "DIR"},          {"export", "NAME"},        {"to", "PATH|URI"},
      {"tls", "off|on|require"}, {"fuse-io-uring", "on|off"}, {"sched", "batch|normal"},
      {"tls-certificates", "DIR"}, {"tls-psk", "FILE"},    {"map", "NAME"},
      {"layer", "PATH"},        {"size", "SIZE"},          {"chunk-size", "SIZE"},
      {"parent", "PATH"},       {"granularity", "BYTES"},  {"max-memory", "SIZE"},
      {"offset", "BYTES"},      {"handshake-timeout", "SECONDS"}, {"queues", "N"},
      {"max-connections", "N"}, {"max-rounds", "N"},       {"state", "DIR"},
  };
  for (const auto& n : opt->get_lnames())
    if (auto it = kByName.find(n); it != kByName.end()) return it->second;
  std::string t = opt->get_type_name();
  t = t.substr(0, t.find(':'));
  if (t == "UINT" || t == "INT") return "N";
  if (t == "FLOAT") return "NUMBER";
  return "VALUE";
}

class HelpFormatter : public CLI::Formatter {
 public:
  std::string make_option_opts(const CLI::Option* opt) const override {
    if (opt->get_positional() || opt->get_items_expected_max() == 0) return "";
    return " " + metavar(opt);
  }
  std::string make_option_desc(const CLI::Option* opt) const override {
    std::string d = opt->get_description();
    if (opt->get_positional() && opt->get_required()) d += " (required)";
    const std::string& def = opt->get_default_str();
    // The values shown as words where the option takes words.
    static const std::map<std::string, std::string> kWords = {{"fuse-io-uring", "on"}, {"sched", "batch"}};
    std::string shown = def;
    for (const auto& n : opt->get_lnames())
      if (auto it = kWords.find(n); it != kWords.end()) shown = it->second;
    if (!shown.empty() && d.find("default") == std::string::npos) d += fmt::format(" (default: {})", shown);
    return d;
  }
};

const CLI::App* deepest(const CLI::App* app) {
  for (;;) {
    auto subs = app->get_subcommands();
    if (subs.empty()) return app;
    app = subs.front();
  }
}

std::string command_path(const CLI::App* app) {
  std::string path;
  for (const CLI::App* a = app; a; a = a->get_parent())
    path = a->get_parent() ? " " + a->get_name() + path : "strata" + path;
  return path;
}

}  // namespace

std::string version_string() {
  std::string v = fmt::format("strata {}", kStrataVersion);
  if (*kStrataGitDescribe) v += fmt::format(" (git {})", kStrataGitDescribe);
  return v;
}

void setup_help(CLI::App& app) {
  app.name("strata");  // not argv[0]: "Usage: strata serve ..." wherever it was run from
  app.formatter(std::make_shared<HelpFormatter>());
  app.set_version_flag("--version", version_string(), "Print the version and exit");
}

std::optional<int> parse_command_line(CLI::App& app, int argc, char** argv) {
  // CLI11 reports through exceptions: this is the one place they are caught.
  try {
    app.parse(argc, argv);
    return std::nullopt;
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    const CLI::App* at = deepest(&app);
    std::string msg = e.what();
    fmt::print(stderr, "strata: {}\n", msg);
    auto verbs = at->get_subcommands([](const CLI::App* s) { return !s->get_name().empty(); });
    if (!verbs.empty()) {
      fmt::print(stderr, "usage: {} VERB [OPTIONS]\nverbs:\n", command_path(at));
      std::size_t w = 0;
      for (const CLI::App* s : verbs) w = std::max(w, s->get_name().size());
      for (const CLI::App* s : verbs) fmt::print(stderr, "  {:<{}}  {}\n", s->get_name(), w, s->get_description());
    }
    fmt::print(stderr, "Run '{} --help' for more.\n", command_path(at));
    return 2;
  }
}

}  // namespace strata::cli
