// Logging through spdlog. Log an error once, where it is first detected.
#pragma once

#include <spdlog/spdlog.h>

#include <string>

namespace dipc {
// Sets up the process-wide logger: level name ("trace".."off") and a prefix naming the node.
void log_init(const std::string& level, const std::string& prefix);
}  // namespace dipc

#define DIPC_LOG_TRACE(...) SPDLOG_TRACE(__VA_ARGS__)
#define DIPC_LOG_DEBUG(...) spdlog::debug(__VA_ARGS__)
#define DIPC_LOG_INFO(...) spdlog::info(__VA_ARGS__)
#define DIPC_LOG_WARN(...) spdlog::warn(__VA_ARGS__)
#define DIPC_LOG_ERROR(...) spdlog::error(__VA_ARGS__)
