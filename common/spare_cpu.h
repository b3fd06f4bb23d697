// Is there a CPU nobody wants? A yielding poll for an answer pays off only then: with every CPU busy, each
// sched_yield() hands the CPU to a runnable task for a whole time slice, and the poll costs more than the wake-up
// it saves (measured in docs/PERFORMANCE.md, "Wake-ups").
#pragma once

namespace dipc {

// True when fewer tasks are runnable in the whole system (the "R" of /proc/loadavg's "R/T", the caller included)
// than CPUs this thread may run on; false when it cannot tell. Reads /proc/loadavg at most once a millisecond per
// process (a few microseconds), and answers from that reading in between.
bool spare_cpu();

}  // namespace dipc
