# Cross build for i386 (32-bit little-endian): cmake -DCMAKE_TOOLCHAIN_FILE=cmake/toolchain-i386.cmake
set(CMAKE_SYSTEM_PROCESSOR i686)
set(DIPC_TRIPLET i686-linux-gnu)
set(DIPC_MULTIARCH i386-linux-gnu)
set(DIPC_QEMU qemu-i386-static)
include(${CMAKE_CURRENT_LIST_DIR}/cross-common.cmake)
