/* lattice.cuh -- lattice geometry and claim keys shared by the rule kernels (stroma.cu; tumor.cu
 * keeps its own inline copies for now and can be folded onto these helpers later).
 *
 * Layout: sites are flat over n_sites = nz*ny*nx in C order, site = (z*ny + y)*nx + x (2D: nz = 1).
 * Neighbour offsets are an (n_offsets, 3) int32 array of (dz, dy, dx) in tmesim.grid.Grid.offsets'
 * order: the order is part of reproducibility, since a random number picks "the k-th" neighbour.
 *
 * Twins in numpy: Grid.coords / Grid.neighbours (coordinates, in-grid mask), tumor.choose_target
 * (k-th of a subset of neighbours), tumor.resolve_claims (64-bit keys).
 */
#ifndef TM_LATTICE_CUH
#define TM_LATTICE_CUH
#include "common.cuh"

#define TM_OUTSIDE (-1LL)

/* Coordinates (z, y, x) of a flat site. */
TM_HD void tm_site_coords(long long s, int ny, int nx, int* z, int* y, int* x) {
    *z = (int)(s / ((long long)ny * nx));
    *y = (int)((s / nx) % ny);
    *x = (int)(s % nx);
}

/* Flat site of neighbour j of (z, y, x), or TM_OUTSIDE when it lies outside the grid (numpy's
 * Grid.neighbours gives such neighbours index 0 and mask False; callers test the mask first). */
TM_HD long long tm_neighbour(int z, int y, int x, const int* offsets, int j, int nz, int ny,
                             int nx) {
    const int zz = z + offsets[3 * j], yy = y + offsets[3 * j + 1], xx = x + offsets[3 * j + 2];
    if (zz < 0 || zz >= nz || yy < 0 || yy >= ny || xx < 0 || xx >= nx) return TM_OUTSIDE;
    return ((long long)zz * ny + yy) * nx + xx;
}

/* Which of n candidates a random word picks: k = (high 32 bits of w * n) >> 32, in [0, n) for
 * n >= 1 (tumor.choose_target; exact in 64 bits for n < 2^32, unbiased to 2^-32). */
TM_HD u64 tm_pick_index(u64 w, u64 n) { return ((w >> 32) * n) >> 32; }

/* Claim key of a source site: (low 32 bits of its random word << 32) | site, the key whose
 * maximum wins a contested voxel (tumor.resolve_claims). Sites must be < 2^32. */
TM_HD u64 tm_claim_key(u64 w, long long site) {
    return ((w & 0xFFFFFFFFull) << 32) | (u64)site;
}

/* The source site of a claim key. */
TM_HD long long tm_claim_source(u64 key) { return (long long)(key & 0xFFFFFFFFull); }

#endif /* TM_LATTICE_CUH */
