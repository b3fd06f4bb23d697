# Cross build for s390x (64-bit big-endian): cmake -DCMAKE_TOOLCHAIN_FILE=cmake/toolchain-s390x.cmake
set(CMAKE_SYSTEM_PROCESSOR s390x)
set(DIPC_TRIPLET s390x-linux-gnu)
set(DIPC_MULTIARCH s390x-linux-gnu)
set(DIPC_QEMU qemu-s390x-static)
include(${CMAKE_CURRENT_LIST_DIR}/cross-common.cmake)
