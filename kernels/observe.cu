/* observe.cu -- the observables of one time-series row in one fused pass (tmesim/observables.py).
 *
 * tm_observe_columns is pass 1 of the deterministic reduction (reduce.cuh) with the contributions
 * computed on the fly: work item w = g * P + j walks the column of plane position j from grid
 * plane m0-1 down to 0, group g = 0 producing the counts and the cell sums, group g = 1 + f the
 * two sums of field f. tm_reduce_tree (pass 2) then gives the TM_OBS_N_QUANTITIES(n_fields)
 * totals, which travel to the host in one copy; the means are divided there.
 *
 * Quantities (rows of cols, float64; the TM_OBS_* below, read by the driver by name):
 *   kind counts (kinds >= TM_OBS_N_KINDS are not counted, as numpy's bincount(...)[:n] drops
 *   them), tumor-state counts of tumor sites (states >= TM_N_STATES not counted), the memory sum
 *   over tumor sites, the time_in_P sum over persisters (tumor sites in state P or E), the count
 *   of tumor sites whose oxygen is below the hypoxic threshold (float32 compare, as numpy compares
 *   a float32 array with a Python float), the counts of tumor sites and of persisters within the
 *   near-CAF ball of a CAF voxel, and per field the sum over all sites and over tumor sites.
 * A site that does not contribute to a sum is skipped, which is adding 0.0: an accumulator that
 * starts at +0.0 never becomes -0.0 under round-to-nearest, so acc + 0.0 == acc bit for bit.
 * Counts are u32 per column (m0 < 2^32) and exact as float64.
 *
 * Near CAF: "within d (Euclidean, centre to centre) of a CAF voxel" is "some integer offset o
 * with o.o <= K lands on a CAF voxel inside the grid", K the largest integer with
 * sqrt(K) * dx <= d in float64 (the distance transform's arithmetic; tmesim.observables.near_ball).
 * The ball is passed as rows (dz, dy, w): offsets (dz, dy, -w..w); a tumor site scans them until
 * a row holds a CAF (only tumor sites are asked). Cost: a work item's serial chain is its
 * column's tumor sites times the rows (81 at d/dx = 5 in 3D), so the latency of one row's loads
 * is paid once per row, not once per byte.
 *
 * Layout: per-site arrays flat over n_sites = nz*ny*nx in C order (2D: nz = 1); m0 is the length
 * of grid axis 0 (nz in 3D, ny in 2D) and P = n_sites / m0.
 */
#include "common.cuh"
#include "lattice.cuh"
#include "reduce.cuh"

#define TM_OBS_N_KINDS 6          /* tmesim.codes.KIND_NAMES */
#define TM_OBS_KINDS 0            /* TM_OBS_N_KINDS kind counts */
#define TM_OBS_STATES 6           /* TM_N_STATES tumor-state counts of tumor sites */
#define TM_OBS_MEMORY 11          /* sum of memory over tumor sites */
#define TM_OBS_TIME_IN_P 12       /* sum of time_in_P_min over persisters (min) */
#define TM_OBS_HYPOXIC 13         /* tumor sites with oxygen < threshold */
#define TM_OBS_NEAR_TUMOR 14      /* tumor sites near a CAF */
#define TM_OBS_NEAR_PERSISTERS 15 /* persisters near a CAF */
#define TM_OBS_FIELDS 16          /* then per field f: 16 + 2f all sites, 17 + 2f tumor sites */
#define TM_OBS_PERSISTER 2        /* tumor states P and E (tmesim.codes.TOLERANT_STATES) */
#define TM_OBS_EXPANDED 4

/* Is a CAF voxel at some offset of the ball from (z, y, x)? rows: (n_rows, 3) int32 (dz, dy, w). */
TM_HD bool tm_obs_near_caf(const u8* kind, int z, int y, int x, int nz, int ny, int nx,
                           const int* rows, long long n_rows) {
    for (long long r = 0; r < n_rows; ++r) {
        const int zz = z + rows[3 * r], yy = y + rows[3 * r + 1], w = rows[3 * r + 2];
        if (zz < 0 || zz >= nz || yy < 0 || yy >= ny) continue;
        const int x0 = x - w < 0 ? 0 : x - w, x1 = x + w >= nx ? nx - 1 : x + w;
        const u8* line = kind + ((long long)zz * ny + yy) * nx;
        /* no exit inside a row: its loads are independent and overlap (a row is short, <= 2r+1
         * bytes; an exit per byte would chain every load's latency) */
        bool hit = false;
        for (int xx = x0; xx <= x1; ++xx) hit |= line[xx] == TM_CAF;
        if (hit) return true;
    }
    return false;
}

/* tm_observe_columns: pass 1 of the row's reduction.
 *   kind, tumor_state      (n_sites,) uint8
 *   memory, time_in_P      (n_sites,) float32
 *   fields                 (n_fields, n_sites) float32
 *   o2                     index of the oxygen field, -1 without one (no hypoxic count)
 *   hypoxic                the threshold as float32
 *   rows, n_rows           the near-CAF ball (see above)
 *   m0, P                  grid axis 0 and the plane size; nz, ny, nx the grid (2D: nz = 1)
 *   cols                   (TM_OBS_FIELDS + 2 n_fields, P) float64, written
 * Launch with n_work = (1 + n_fields) * P; each work item owns its columns, so any order gives
 * the same result. */
TM_KERNEL void tm_observe_columns(const u8* kind, const u8* tumor_state, const float* memory,
                                  const float* time_in_P, const float* fields, long long n_fields,
                                  long long o2, float hypoxic, const int* rows, long long n_rows,
                                  long long m0, long long P, int nz, int ny, int nx,
                                  double* cols) {
    const long long n = m0 * P;
    TM_FOR_EACH(w, (1 + n_fields) * P) {
        const long long g = w / P, j = w - g * P;
        if (g == 0) {
            u32 nkind[TM_OBS_N_KINDS], nstate[TM_N_STATES];
            for (int c = 0; c < TM_OBS_N_KINDS; ++c) nkind[c] = 0;
            for (int c = 0; c < TM_N_STATES; ++c) nstate[c] = 0;
            u32 nhyp = 0, nnear = 0, nnear_pers = 0;
            double mem = 0.0, tip = 0.0;
            for (long long i = m0 - 1; i >= 0; --i) {
                const long long s = i * P + j;
                const int k = kind[s];
                for (int c = 0; c < TM_OBS_N_KINDS; ++c) nkind[c] += (k == c);
                if (k != TM_TUMOR) continue;
                const int st = tumor_state[s];
                for (int c = 0; c < TM_N_STATES; ++c) nstate[c] += (st == c);
                const bool pers = st == TM_OBS_PERSISTER || st == TM_OBS_EXPANDED;
                mem = __dadd_rn(mem, (double)memory[s]);
                if (pers) tip = __dadd_rn(tip, (double)time_in_P[s]);
                if (o2 >= 0 && fields[o2 * n + s] < hypoxic) ++nhyp;
                int z, y, x;
                tm_site_coords(s, ny, nx, &z, &y, &x);
                if (tm_obs_near_caf(kind, z, y, x, nz, ny, nx, rows, n_rows)) {
                    ++nnear;
                    if (pers) ++nnear_pers;
                }
            }
            for (int c = 0; c < TM_OBS_N_KINDS; ++c)
                cols[(TM_OBS_KINDS + c) * P + j] = (double)nkind[c];
            for (int c = 0; c < TM_N_STATES; ++c)
                cols[(TM_OBS_STATES + c) * P + j] = (double)nstate[c];
            cols[TM_OBS_MEMORY * P + j] = mem;
            cols[TM_OBS_TIME_IN_P * P + j] = tip;
            cols[TM_OBS_HYPOXIC * P + j] = (double)nhyp;
            cols[TM_OBS_NEAR_TUMOR * P + j] = (double)nnear;
            cols[TM_OBS_NEAR_PERSISTERS * P + j] = (double)nnear_pers;
        } else {
            const long long f = g - 1;
            const float* v = fields + f * n;
            double all = 0.0, tum = 0.0;
            for (long long i = m0 - 1; i >= 0; --i) {
                const long long s = i * P + j;
                const double x = (double)v[s];
                all = __dadd_rn(all, x);
                if (kind[s] == TM_TUMOR) tum = __dadd_rn(tum, x);
            }
            cols[(TM_OBS_FIELDS + 2 * f) * P + j] = all;
            cols[(TM_OBS_FIELDS + 2 * f + 1) * P + j] = tum;
        }
    }
}
