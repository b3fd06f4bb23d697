#include "common/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

namespace dipc {

void log_init(const std::string& level, const std::string& prefix) {
  auto logger = spdlog::stderr_color_mt("dipc");
  logger->set_pattern("%H:%M:%S.%e %^%l%$ [" + prefix + "] %v");
  logger->set_level(spdlog::level::from_str(level));
  spdlog::set_default_logger(logger);
}

}  // namespace dipc
