// Prometheus text exposition (format 0.0.4) of a server's state, for `serve
// --metrics` (docs/metrics.md lists every series). Reads only: counters the
// devices, targets, NBD server and jobs already keep, plus each device's
// IoMetrics (core/metrics.h). Any thread may call it.
#pragma once

#include <string>
#include <string_view>

#include "control/commands.h"
#include "core/metrics.h"

namespace strata::control {

std::string render_metrics(const Daemon& d);

// A device's request counters for `strata status --json` ("io") and `strata
// top`: {ops, bytes, errors: {read, write, flush, trim, zero}, in_flight,
// latency: {read, write, flush: {count, sum_us}}}.
nlohmann::json io_metrics_json(const IoMetrics& m);

// A label value as Prometheus text wants it: log_escape()d first (no control
// byte or invalid UTF-8 from a table or client), then backslash and double
// quote escaped.
std::string metric_label(std::string_view v);

}  // namespace strata::control
