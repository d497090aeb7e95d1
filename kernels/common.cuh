/* common.cuh -- vocabulary shared by every tmesim kernel, on the GPU and in the portable build.
 *
 * Types: u8/u32/u64 are spelled without <stdint.h> (NVRTC has no host headers).
 * TM_HD marks helpers that compile for both device and host (the numpy parity tests run the same
 * sources as C++ through portable.h).
 * TM_FOR_EACH(i, n) is the grid-stride loop every kernel uses: on the GPU each thread takes
 * i = its global index, then steps by the whole grid, so any launch size covers n work items; in
 * the portable build one call runs them all (see portable.h).
 */
#ifndef TM_COMMON_CUH
#define TM_COMMON_CUH

#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)   /* plain C++: nvcc and NVRTC define these */
#include "portable.h"
#else
#define TM_FOR_EACH(i, n)                                                                     \
    for (long long tm_n_ = (long long)(n),                                                    \
                   i = (long long)blockIdx.x * blockDim.x + threadIdx.x;                      \
         i < tm_n_; i += (long long)blockDim.x * gridDim.x)
#endif

#define TM_HD __host__ __device__ __forceinline__

/* Unroll the next loop on the device (a loop over the three axes whose per-axis values must
 * stay in registers); nothing in the portable build, where g++ does not know the pragma. */
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define TM_UNROLL _Pragma("unroll")
#else
#define TM_UNROLL
#endif

/* Threads per block of every launch: tmesim/launch.py puts its BLOCK in the #define preamble,
 * so the launch and the compiler's register budget (__launch_bounds__) agree. */
#ifndef TM_BLOCK
#define TM_BLOCK 256
#endif
#define TM_KERNEL extern "C" __global__ __launch_bounds__(TM_BLOCK)

typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long long u64;

/* Occupant kinds and tumor states: tmesim/codes.py (part of the file format, never renumbered).
 * TM_N_STATES counts the tumor states none, S, P, R, E (tmesim.codes.TUMOR_STATE_NAMES). */
#define TM_EMPTY 0
#define TM_TUMOR 1
#define TM_CAF 2
#define TM_TAM 3
#define TM_VESSEL 4
#define TM_NECROTIC 5
#define TM_STATE_NONE 0
#define TM_N_STATES 5

/* NaN test that no compiler option turns into "false" (x != x is IEEE's definition). */
TM_HD bool tm_isnan(float x) { return x != x; }

#endif /* TM_COMMON_CUH */
