/* portable.h -- the CUDA kernels of tmesim as plain C++ (g++/clang++), for CI without a GPU.
 *
 * Included by common.cuh only when __CUDACC__ is not defined (nvcc and NVRTC define it). It maps
 * the CUDA vocabulary the kernels use onto sequential C++:
 *   - __global__/__device__/__host__/__forceinline__ become plain (inline) functions, so every
 *     extern "C" kernel is an exported C function with the same argument list (callable through
 *     ctypes, see tmesim.launch.PortableLauncher);
 *   - TM_FOR_EACH(i, n), the kernels' grid-stride loop, runs all n work items in one call, in an
 *     order chosen by tm_portable_set_order(): 0 forward, 1 reverse, 2 a fixed pseudo-random
 *     permutation (i = a*j mod n with a coprime to n). Running a kernel in several orders and
 *     getting the same result shows it does not depend on the order in which threads run (it does
 *     not show freedom from intra-thread interleavings: that is argued in each kernel's comment);
 *   - atomicMax is a plain max (one thread at a time); __umul64hi uses 128-bit integers;
 *   - the round-to-nearest intrinsics (__fmul_rn, ...) are the plain operators. Build with
 *     -ffp-contract=off so the compiler never fuses a*b+c into an FMA, exactly as the intrinsics
 *     forbid nvcc to: both sides then round every operation as numpy does.
 */
#ifndef TM_PORTABLE_H
#define TM_PORTABLE_H
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#error "portable.h is for host C++ builds only"
#endif

#include <math.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }

inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * (unsigned __int128)b) >> 64);
}

inline unsigned long long atomicMax(unsigned long long* addr, unsigned long long v) {
    unsigned long long old = *addr;
    if (v > old) *addr = v;
    return old;
}

/* Order in which TM_FOR_EACH visits its work items (see the file comment). */
inline int tm_portable_order = 0;

extern "C" void tm_portable_set_order(int mode) { tm_portable_order = mode; }

inline long long tm_portable_gcd(long long a, long long b) {
    while (b) { long long t = a % b; a = b; b = t; }
    return a;
}

inline long long tm_portable_index(long long j, long long n) {
    if (tm_portable_order == 1) return n - 1 - j;
    if (tm_portable_order == 2) {
        static long long cached_n = -1, cached_a = 1;
        if (n != cached_n) {
            long long a = (long long)(0x9E3779B97F4A7C15ull % (unsigned long long)n);
            if (a < 1) a = 1;
            while (tm_portable_gcd(a, n) != 1) ++a;   /* a coprime to n: j -> a j mod n permutes */
            cached_n = n;
            cached_a = a;
        }
        return (long long)(((unsigned __int128)j * (unsigned long long)cached_a + 7u)
                           % (unsigned long long)n);
    }
    return j;
}

#define TM_FOR_EACH(i, n)                                                                     \
    for (long long tm_n_ = (long long)(n), tm_j_ = 0, i = 0;                                  \
         tm_j_ < tm_n_ && ((i = tm_portable_index(tm_j_, tm_n_)), true); ++tm_j_)

#endif /* TM_PORTABLE_H */
