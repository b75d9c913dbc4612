#include "control/commands.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <set>
#include <string>

namespace strata::control {
namespace {

using json = nlohmann::json;

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kRead:
      return "read";
    case Kind::kChange:
      return "change";
    case Kind::kJob:
      return "job";
    case Kind::kWait:
      return "wait";
  }
  return "?";
}

// server_methods needs no device, listener or queue.
json methods() {
  Daemon d;
  json r = dispatch(d, json{{"method", "server_methods"}});
  EXPECT_TRUE(r.value("ok", false)) << r.dump();
  return r["result"];
}

TEST(ControlMethods, ServerMethodsListsEveryMethodWithItsKindAndHelp) {
  json m = methods();
  ASSERT_TRUE(m.is_array());
  std::set<std::string> names;
  for (const auto& e : m) {
    std::string name = e.at("name");
    EXPECT_TRUE(names.insert(name).second) << "listed twice: " << name;
    EXPECT_EQ(e.at("kind"), kind_name(classify(name))) << name;
    std::string help = e.at("help");
    EXPECT_FALSE(help.empty()) << name;
    EXPECT_EQ(help.find('\n'), std::string::npos) << name << ": help is one line";
  }
  for (const char* n : {"device_list", "device_table", "device_status", "device_dump", "server_status",
                        "server_methods", "device_create", "device_remove", "device_reload", "device_suspend",
                        "device_resume", "dirty_start", "dirty_stop", "dirty_status", "dirty_list", "dirty_clear",
                        "dirty_checkpoint", "device_sync", "device_snapshot", "device_merge", "device_flatten",
                        "job_list", "job_wait", "job_cancel", "export_fuse_start", "export_fuse_stop",
                        "export_fuse_list"})
    EXPECT_TRUE(names.count(n)) << "missing: " << n;
  EXPECT_EQ(names.size(), 27u);
}

// How the server runs each method, as before the methods became a table.
TEST(ControlMethods, Classify) {
  for (const char* n : {"device_list", "device_table", "device_status", "device_dump", "server_status",
                        "server_methods", "job_list", "job_cancel", "dirty_status", "dirty_list"})
    EXPECT_EQ(classify(n), Kind::kRead) << n;
  for (const char* n : {"device_merge", "device_flatten", "device_sync"}) EXPECT_EQ(classify(n), Kind::kJob) << n;
  EXPECT_EQ(classify("job_wait"), Kind::kWait);
  for (const char* n : {"device_create", "device_remove", "device_reload", "device_suspend", "device_resume",
                        "device_snapshot", "dirty_start", "dirty_stop", "dirty_clear", "dirty_checkpoint",
                        "export_fuse_start", "export_fuse_stop", "export_fuse_list"})
    EXPECT_EQ(classify(n), Kind::kChange) << n;
  // Unknown: a change, answered with the error on the worker.
  EXPECT_EQ(classify("nosuch"), Kind::kChange);
  EXPECT_EQ(classify(""), Kind::kChange);
}

TEST(ControlMethods, UnknownMethodNamesEveryKnownOne) {
  Daemon d;
  json r = dispatch(d, json{{"method", "nosuch"}});
  ASSERT_FALSE(r.value("ok", true));
  std::string e = r["error"];
  std::string list;
  for (const auto& m : methods()) list += (list.empty() ? "" : ", ") + m["name"].get<std::string>();
  EXPECT_EQ(e, "unknown method 'nosuch' (known: " + list + ")");
}

// A job's methods are run by the control server (start_job, find_job), not by dispatch.
TEST(ControlMethods, DispatchRefusesJobs) {
  Daemon d;
  for (const char* n : {"device_merge", "device_flatten", "device_sync", "job_wait"}) {
    json r = dispatch(d, json{{"method", n}});
    EXPECT_FALSE(r.value("ok", true)) << n;
  }
  auto j = start_job(d, json{{"method", "device_list"}});
  ASSERT_FALSE(j);
  EXPECT_EQ(j.error().message, "device_list is not a job");
  auto w = find_job(d, json{{"method", "device_merge"}});
  ASSERT_FALSE(w);
  EXPECT_EQ(w.error().message, "device_merge does not follow a job");
  // Params are checked before the job starts.
  auto b = start_job(d, json{{"method", "device_merge"}, {"params", {{"detach", 1}}}});
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().message, "\"detach\" must be true or false");
}

}  // namespace
}  // namespace strata::control
