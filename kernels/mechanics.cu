/* mechanics.cu -- bounded displacement at division (tmesim/steps/mechanics.py, the specification):
 * a tumor cell that decided to divide but found no empty neighbour (a "blocked" cell of the tumor
 * rules) pushes a chain of cells one voxel along the shortest path to the nearest empty voxel
 * within the push reach, and her daughter takes the freed neighbour. Driver:
 * tmesim/steps/mechanics_kernel.py (KernelPushing), called by KernelTumorRules.apply after the
 * three tumor launches (tumor.cu), on the lattice they left, as numpy's TumorRules.apply calls
 * Pushing.apply after its other rules.
 *
 * Launches of one step (only when the reach is at least one voxel edge, cap >= TM_PUSH_UNIT):
 *   tm_push_distance_first, then tm_push_distance `passes` - 1 times: `passes` = cap / 10 passes
 *                     of the distance field D (uint16 per site), in place in ONE buffer. The
 *                     first pass reads only `kind`: 0 at empty voxels, INF at every voxel that
 *                     is not pushable, and at a pushable occupied voxel min over its in-grid
 *                     empty neighbours j of w_j (INF if none, or if it exceeds cap): the first
 *                     Jacobi pass from the initial field (0 at empty voxels, INF elsewhere). Each
 *                     further pass relaxes in place: at a pushable occupied voxel
 *                     D[s] = min(D[s], min over in-grid neighbours j of D[nb_j] + w_j), stored
 *                     only when that is below D[s] and at most cap (the capped Jacobi update:
 *                     a value above cap can only replace INF, by INF); other voxels are left as
 *                     the first pass set them. The final field is exactly the Jacobi field of
 *                     `passes` passes whatever the order of the work items (see "Races" below).
 *                     numpy's Pushing computes the same field (Jacobi passes until a fixed point,
 *                     and only in windows around the mothers: the same values wherever a walk
 *                     reads, tests/steps/test_mechanics.py);
 *   tm_push_claim     every blocked mother (action event TM_ACT_BLOCKED) walks her path
 *                     (tm_push_first / tm_push_next below, Pushing.paths hop for hop) and claims
 *                     every voxel on it, her own included, by an integer atomicMax of
 *                     key = (low 32 bits of her DIRECTION word << 32) | her site, the key of
 *                     tumor.resolve_claims; her action event becomes TM_ACT_PUSH_FAR (no
 *                     empty voxel within reach) or TM_ACT_PUSH_LOST ("has a path", until
 *                     tm_push_apply finds it won);
 *   tm_push_apply     every mother with a path walks it again (the walk reads only D and the
 *                     random words: the same path) and checks claims[v] == key on every voxel. A
 *                     winner shifts her path: carry = her own cell (kind, tumor_state, memory,
 *                     time_in_P), and at each voxel n1, ..., e in turn the carry and the voxel's
 *                     cell swap places, so n1 gets the copy of the mother (the daughter), n2 the
 *                     old occupant of n1, ..., e (the empty voxel) that of the last pushed cell,
 *                     numpy's "column j takes column j - 1's occupant"; she records
 *                     target[s] = n1 and TM_ACT_PUSH_WON. Losers keep TM_ACT_PUSH_LOST;
 *   tm_push_finish    every mother with a path walks it a third time and resets claims on it to 0
 *                     (the claims array is shared with tumor.cu and stroma.cu: all 0 between
 *                     launches of theirs).
 * The walk, written once (tm_push_first, tm_push_next), is the twin of Pushing.paths: the first
 * hop goes to a neighbour with the least D[nb] + w if that is at most cap + 10 (else "far"), each
 * further hop to a neighbour with D[nb] + w == D[cur], until D == 0; among tied neighbours the k-th
 * in Grid.offsets order, k = tm_pick_index(word, n_tied) with the word of (seed, step, mother,
 * TM_STREAM_PUSH_PATH, lane = hop: 0 for the first hop, 1, 2, ... after). A single candidate needs
 * no word (k = 0 whatever the word), so none is drawn. D falls by at least 10 per hop after the
 * first, so a path has at most cap / 10 + 2 voxels and never visits one twice (the mother's own D,
 * if finite, equals the first hop's D[n1] + w, above every D along the path).
 *
 * Races, launch by launch. tm_push_distance_first: reads kind, writes its own D[s] only (D is
 * not read). tm_push_distance: reads kind, its own D[s] (which only it writes) and its
 * neighbours' D[nb], which their own work items may be lowering at the same moment; it writes
 * D[s] only, and only to lower it. Those neighbour reads race with the writes on the GPU, and the
 * races are benign: they change intermediate values, never the final field, which is unique. Why:
 *   (a) every value ever stored is the length of a real path through pushable voxels to an empty
 *       voxel (0 at an empty voxel; a neighbour's stored value + w otherwise), or INF; so every
 *       value, at any moment and in any order, is >= T, the true distance (T = INF beyond cap);
 *   (b) values only fall: within a launch any read of D[nb] returns the value it held when the
 *       launch began or one stored since (a 16-bit aligned load or store does not tear on the
 *       GPU, and launches are ordered on the stream, so a launch starts on all of the previous
 *       one's stores), i.e. a value <= the one it held when the launch began;
 *   (c) so by induction on the passes, after p passes the in-place field is <= J_p, the Jacobi
 *       field after p passes (two buffers, each pass reading only the previous one's field):
 *       after the first pass they are equal (it reads only kind); in pass p + 1 at a pushable
 *       voxel, D[s] at the start is <= J_p[s] and every D[nb] read is <= J_p[nb] by (b), so the
 *       minimum is <= Jacobi's, and the cap (x -> x if x <= cap, else INF) is monotone, so the
 *       update keeps D[s] <= J_p+1[s] (storing only a value below D[s] and at most cap is that
 *       capped update, since D[s] is INF or at most cap);
 *   (d) J_passes = T: a distance d <= cap is a path of at most d / 10 <= passes hops (each at
 *       least 10), found by the passes one hop each. With (a): T <= D <= J_passes = T.
 * Hence after `passes` passes every site whose true distance is <= cap holds exactly that
 * distance and every other site holds INF, whatever the order in which threads update and read
 * (the portable build's forward, reverse and scrambled orders in
 * tests/steps/test_mechanics_kernel.py all give numpy's field; the GPU's order is its own). So
 * these are benign races, not data races on the result: the final field is unique, and no later
 * launch can tell which of the racing values a thread saw. (The claim, apply and finish
 * launches read only that final field.)
 * tm_push_claim: writes claims only through atomicMax (associative and commutative: the largest
 * key wins whatever the order, as np.maximum.at), and its own action[s]; reads D, which nobody
 * writes. tm_push_apply: no thread writes claims or D, so every check sees the final claims of
 * tm_push_claim; a winner writes kind, tumor_state, memory and time_in_P only at the voxels of
 * her path (her own included, which she won too), and winning paths are disjoint (each voxel has
 * one largest key), so no two threads write one voxel and no thread reads a voxel another writes
 * (losers read only D and claims); action[s] and target[s] are the thread's own. tm_push_finish:
 * threads whose paths share a voxel all store 0 there, the same value (the final state does not
 * depend on which store lands last); claims is not read in this launch. Every voxel ever claimed
 * lies on the path of a mother with TM_ACT_PUSH_WON or TM_ACT_PUSH_LOST, so claims are all 0
 * afterwards.
 *
 * Codes: the push outcome is the event (low 4 bits) of a blocked mother's action byte of
 * tumor.cu, TM_ACT_PUSH_* written over TM_ACT_BLOCKED (bits 4-6, her phenotype transition,
 * kept); the host counts them with the tumor rules' one bincount of `action` (256 values).
 * Pushable kinds come as a bit mask `pushable` (bit k: kind code k may be pushed;
 * tmesim.steps.mechanics.pushable_mask). Distances are integers in tenths of a voxel edge
 * (chamfer weights 10, 14, 17 for a step across 1, 2, 3 axes), cap = round(10 reach / dx)
 * (mechanics.reach_units).
 *
 * Memory: D is one (n_sites,) uint16 buffer, 2 B per site, allocated only when the rule is on;
 * claims (uint64), action (uint8) and target (uint32) are the tumor rules'. Bytes moved per site
 * (DRAM, neighbours' D and kind served from cache): tm_push_distance_first 3 B (kind read, D
 * written) and tm_push_distance at most 5 B per pass (kind and D read, D written where it falls;
 * 1 B at a site that is empty or not pushable: kind only): at most 5 passes - 2 in all;
 * tm_push_claim, tm_push_apply and tm_push_finish 1 B each (the action byte) plus, per blocked
 * mother, the D values around her path (each launch), 8 B of claims per path voxel
 * (atomicMax, then read, then reset) and for a winner 10 B read and 10 B written per path voxel
 * (kind, tumor_state, memory, time_in_P): at the reach of 60 um on a 20 um lattice (3 passes),
 * at most 16 B per site plus the paths. (benchmarks/bench_gpu.py counts the launches' array
 * arguments densely instead, an upper bound.)
 */
#include "common.cuh"
#include "rng.cuh"
#include "lattice.cuh"

typedef unsigned short u16;

/* The tumor rules' action byte (tumor.cu): the same definitions, so the translation unit (every
 * .cu in one, tmesim.launch) refuses to build if the two ever differ. The push outcome of a
 * blocked mother replaces her event TM_ACT_BLOCKED (the rule off: she stays BLOCKED). */
#define TM_ACT_BLOCKED 4     /* tumor cell would divide but has no empty neighbour */
#define TM_ACT_PUSH_WON 9    /* her path won every voxel: she divided by pushing */
#define TM_ACT_PUSH_LOST 10  /* she has a path (tm_push_claim) that lost a voxel (tm_push_apply) */
#define TM_ACT_PUSH_FAR 11   /* no empty voxel within reach: she does not divide */
#define TM_ACT_EVENT_MASK 15

/* Distances (tmesim.steps.mechanics): tenths of a voxel edge. */
#define TM_PUSH_UNIT 10      /* a step along one axis */
#define TM_PUSH_W2 14        /* a diagonal step across two axes */
#define TM_PUSH_W3 17        /* across three */
#define TM_PUSH_INF 32767    /* not pushable, or beyond the reach; INF + w does not wrap */

/* Chamfer length of neighbour offset j (mechanics.step_weights). */
TM_HD int tm_push_weight(const int* offsets, int j) {
    const int axes = (offsets[3 * j] != 0) + (offsets[3 * j + 1] != 0) + (offsets[3 * j + 2] != 0);
    return axes == 1 ? TM_PUSH_UNIT : axes == 2 ? TM_PUSH_W2 : TM_PUSH_W3;
}

/* Where a walk stands: the current voxel, its coordinates and D, and the lane of the next draw. */
struct TmPushWalk {
    long long site;
    int z, y, x;
    int d;
    u64 lane;
};

/* The lattice and field a walk reads (read only while any walk runs). */
struct TmPushLattice {
    int nz, ny, nx;
    const int* offsets;
    int n_offsets;
    const u16* D;
    u64 seed, step;
};

/* Move the walk to neighbour j of its current voxel (j in the grid). */
TM_HD long long tm_push_move(TmPushWalk* w, const TmPushLattice& g, int j) {
    w->z += g.offsets[3 * j];
    w->y += g.offsets[3 * j + 1];
    w->x += g.offsets[3 * j + 2];
    w->site = ((long long)w->z * g.ny + w->y) * g.nx + w->x;
    w->d = g.D[w->site];
    ++w->lane;
    return w->site;
}

/* Among the in-grid neighbours j of the walk's voxel with D[nb] + w_j == want (n of them, n >= 1),
 * the one the mother's word at the walk's lane picks (k-th in offsets order; no draw for n = 1). */
TM_HD int tm_push_pick(const TmPushWalk* w, const TmPushLattice& g, long long mother, int want,
                       u64 n) {
    const u64 k = n > 1 ? tm_pick_index(tm_rng_word_lane(g.seed, g.step, (u64)mother,
                                                         TM_STREAM_PUSH_PATH, w->lane), n)
                        : 0;
    u64 seen = 0;
    for (int j = 0; j < g.n_offsets; ++j) {
        const long long nb = tm_neighbour(w->z, w->y, w->x, g.offsets, j, g.nz, g.ny, g.nx);
        if (nb == TM_OUTSIDE || (int)g.D[nb] + tm_push_weight(g.offsets, j) != want) continue;
        if (seen == k) return j;
        ++seen;
    }
    return -1;   /* not reached: n candidates exist */
}

/* First hop of mother s's path (Pushing.paths): the walk stands at s, moves to n1 and returns it;
 * TM_OUTSIDE when the least D[nb] + w exceeds cap + 10 (free space beyond reach: "far"). */
TM_HD long long tm_push_first(TmPushWalk* w, const TmPushLattice& g, long long s, int cap) {
    w->site = s;
    w->lane = 0;
    tm_site_coords(s, g.ny, g.nx, &w->z, &w->y, &w->x);
    int best = TM_PUSH_INF + TM_PUSH_W3 + 1;
    u64 n = 0;
    for (int j = 0; j < g.n_offsets; ++j) {
        const long long nb = tm_neighbour(w->z, w->y, w->x, g.offsets, j, g.nz, g.ny, g.nx);
        if (nb == TM_OUTSIDE) continue;
        const int t = (int)g.D[nb] + tm_push_weight(g.offsets, j);
        if (t < best) {
            best = t;
            n = 1;
        } else if (t == best) {
            ++n;
        }
    }
    if (n == 0 || best > cap + TM_PUSH_UNIT) return TM_OUTSIDE;
    return tm_push_move(w, g, tm_push_pick(w, g, s, best, n));
}

/* Next hop of mother s's walk: a neighbour with D[nb] + w == D[cur]; TM_OUTSIDE once the walk
 * stands on the empty voxel (D == 0), the end of the path. */
TM_HD long long tm_push_next(TmPushWalk* w, const TmPushLattice& g, long long s) {
    if (w->d == 0) return TM_OUTSIDE;
    u64 n = 0;
    for (int j = 0; j < g.n_offsets; ++j) {
        const long long nb = tm_neighbour(w->z, w->y, w->x, g.offsets, j, g.nz, g.ny, g.nx);
        n += nb != TM_OUTSIDE && (int)g.D[nb] + tm_push_weight(g.offsets, j) == w->d;
    }
    if (n == 0) return TM_OUTSIDE;   /* not reached: a finite D > 0 is some neighbour's D + w */
    return tm_push_move(w, g, tm_push_pick(w, g, s, w->d, n));
}

/* The claim key of mother s: tumor.resolve_claims with her DIRECTION word. */
TM_HD u64 tm_push_key(const TmPushLattice& g, long long s) {
    return tm_claim_key(tm_rng_word(g.seed, g.step, (u64)s, TM_STREAM_DIRECTION), s);
}

/* The action byte with its event replaced by the push outcome o (TM_ACT_PUSH_*), the other bits
 * (the phenotype transition) kept. */
TM_HD u8 tm_push_with(u8 a, int o) { return (u8)((a & ~TM_ACT_EVENT_MASK) | o); }

/* Whether site s is a blocked mother whose outcome is o (after tm_push_claim: LOST or FAR). */
TM_HD bool tm_push_is(u8 a, int o) { return (a & TM_ACT_EVENT_MASK) == o; }

/* tm_push_distance_first: the first pass of the distance field, from `kind` alone (the first
 * Jacobi pass of Pushing.relax on the whole lattice from 0 at empty voxels, INF elsewhere).
 *   n_sites, nz, ny, nx  the grid (2D: nz = 1)
 *   kind                 (n_sites,) uint8, the lattice after the tumor rules (read only)
 *   pushable             bit k set: kind code k may be pushed
 *   offsets, n_offsets   (n_offsets, 3) int32 (dz, dy, dx) in Grid.offsets' order
 *   cap                  the reach in tenths of a voxel edge (>= 10)
 *   D                    (n_sites,) uint16 out (not read): 0 at empty voxels, the least w of an
 *                        in-grid empty neighbour at a pushable occupied voxel (INF if none or
 *                        above cap), INF elsewhere
 * One work item per site; it writes D[s] only. */
TM_KERNEL void tm_push_distance_first(long long n_sites, int nz, int ny, int nx,
                                      const u8* __restrict__ kind, int pushable,
                                      const int* __restrict__ offsets, int n_offsets, int cap,
                                      u16* __restrict__ D) {
    TM_FOR_EACH(s, n_sites) {
        const u8 k = kind[s];
        int out = TM_PUSH_INF;
        if (k == TM_EMPTY) {
            out = 0;
        } else if (k < 8 && ((pushable >> k) & 1)) {
            int z, y, x;
            tm_site_coords(s, ny, nx, &z, &y, &x);
            for (int j = 0; j < n_offsets; ++j) {
                const long long nb = tm_neighbour(z, y, x, offsets, j, nz, ny, nx);
                if (nb == TM_OUTSIDE || kind[nb] != TM_EMPTY) continue;
                const int t = tm_push_weight(offsets, j);
                out = t < out ? t : out;
            }
            out = out > cap ? TM_PUSH_INF : out;
        }
        D[s] = (u16)out;
    }
}

/* tm_push_distance: a further pass of the distance field, in place (Pushing.relax on the whole
 * lattice; each value it leaves is at most the Jacobi pass's: "Races" in the file comment).
 *   n_sites, nz, ny, nx, kind, pushable, offsets, n_offsets, cap  as tm_push_distance_first
 *   D                    (n_sites,) uint16, updated in place: at a pushable occupied voxel s,
 *                        D[s] = min(D[s], min over in-grid neighbours j of D[nb_j] + w_j) where
 *                        that is at most cap; every other voxel is left as it is
 * One work item per site; it writes D[s] only, and only to lower it. It reads its neighbours' D
 * while their own work items may be lowering them: benign races (file comment). */
TM_KERNEL void tm_push_distance(long long n_sites, int nz, int ny, int nx,
                                const u8* __restrict__ kind, int pushable,
                                const int* __restrict__ offsets, int n_offsets, int cap,
                                u16* __restrict__ D) {
    TM_FOR_EACH(s, n_sites) {
        const u8 k = kind[s];
        if (k != TM_EMPTY && k < 8 && ((pushable >> k) & 1)) {
            const int old = D[s];
            int best = old;
            int z, y, x;
            tm_site_coords(s, ny, nx, &z, &y, &x);
            for (int j = 0; j < n_offsets; ++j) {
                const long long nb = tm_neighbour(z, y, x, offsets, j, nz, ny, nx);
                if (nb == TM_OUTSIDE) continue;
                const int t = (int)D[nb] + tm_push_weight(offsets, j);
                best = t < best ? t : best;
            }
            /* the capped update: above cap it could only replace INF, by INF */
            if (best < old && best <= cap) D[s] = (u16)best;
        }
    }
}

/* tm_push_claim: every blocked mother walks her path and claims each voxel of it.
 *   n_sites, nz, ny, nx, offsets, n_offsets, cap  as tm_push_distance
 *   D                    (n_sites,) uint16, the final distance field (read only)
 *   seed, step           the generator's key and counter (rng.cuh)
 *   action               (n_sites,) uint8 from the tumor launches: a blocked mother's event
 *                        becomes TM_ACT_PUSH_FAR or TM_ACT_PUSH_LOST (has a path)
 *   claims               (n_sites,) uint64, all 0 on entry: the largest key claiming each voxel
 * One work item per site. */
TM_KERNEL void tm_push_claim(long long n_sites, int nz, int ny, int nx,
                             const int* __restrict__ offsets, int n_offsets, int cap,
                             const u16* __restrict__ D, u64 seed, u64 step,
                             u8* __restrict__ action, u64* __restrict__ claims) {
    const TmPushLattice g = {nz, ny, nx, offsets, n_offsets, D, seed, step};
    TM_FOR_EACH(s, n_sites) {
        const u8 a = action[s];
        if ((a & TM_ACT_EVENT_MASK) == TM_ACT_BLOCKED) {
            TmPushWalk w;
            long long v = tm_push_first(&w, g, s, cap);
            if (v == TM_OUTSIDE) {
                action[s] = tm_push_with(a, TM_ACT_PUSH_FAR);
            } else {
                const u64 key = tm_push_key(g, s);
                atomicMax(&claims[s], key);
                for (; v != TM_OUTSIDE; v = tm_push_next(&w, g, s)) atomicMax(&claims[v], key);
                action[s] = tm_push_with(a, TM_ACT_PUSH_LOST);
            }
        }
    }
}

/* tm_push_apply: mothers whose path won every voxel shift it; see the file comment.
 *   n_sites, nz, ny, nx, offsets, n_offsets, cap, D, seed, step  as tm_push_claim
 *   kind, tumor_state, memory, time_in_P  (n_sites,) uint8, uint8, float32, float32: along a
 *                        winning path each cell moves one voxel on and the mother's copy takes n1
 *   action               (n_sites,) uint8: a winner's event becomes TM_ACT_PUSH_WON
 *   target               (n_sites,) uint32: target[s] = n1 (her daughter's voxel) at a winner
 *   claims               (n_sites,) uint64 from tm_push_claim (read only)
 * One work item per site. */
TM_KERNEL void tm_push_apply(long long n_sites, int nz, int ny, int nx,
                             const int* __restrict__ offsets, int n_offsets, int cap,
                             const u16* __restrict__ D, u64 seed, u64 step,
                             u8* __restrict__ kind, u8* __restrict__ tumor_state,
                             float* __restrict__ memory, float* __restrict__ time_in_P,
                             u8* __restrict__ action, u32* __restrict__ target,
                             const u64* __restrict__ claims) {
    const TmPushLattice g = {nz, ny, nx, offsets, n_offsets, D, seed, step};
    TM_FOR_EACH(s, n_sites) {
        const u8 a = action[s];
        if (tm_push_is(a, TM_ACT_PUSH_LOST)) {
            const u64 key = tm_push_key(g, s);
            bool won = claims[s] == key;
            TmPushWalk w;
            for (long long v = tm_push_first(&w, g, s, cap); won && v != TM_OUTSIDE;
                 v = tm_push_next(&w, g, s))
                won = claims[v] == key;
            if (won) {
                u8 c_kind = kind[s], c_state = tumor_state[s];
                float c_memory = memory[s], c_time = time_in_P[s];
                long long v = tm_push_first(&w, g, s, cap);
                target[s] = (u32)v;
                for (; v != TM_OUTSIDE; v = tm_push_next(&w, g, s)) {
                    const u8 k = kind[v], t = tumor_state[v];
                    const float m = memory[v], p = time_in_P[v];
                    kind[v] = c_kind;
                    tumor_state[v] = c_state;
                    memory[v] = c_memory;
                    time_in_P[v] = c_time;
                    c_kind = k;
                    c_state = t;
                    c_memory = m;
                    c_time = p;
                }
                action[s] = tm_push_with(a, TM_ACT_PUSH_WON);
            }
        }
    }
}

/* tm_push_finish: every mother with a path (won or lost) resets claims on it to 0.
 *   n_sites, nz, ny, nx, offsets, n_offsets, cap, D, seed, step  as tm_push_claim
 *   action               (n_sites,) uint8 (read only)
 *   claims               (n_sites,) uint64: all 0 afterwards
 * One work item per site. */
TM_KERNEL void tm_push_finish(long long n_sites, int nz, int ny, int nx,
                              const int* __restrict__ offsets, int n_offsets, int cap,
                              const u16* __restrict__ D, u64 seed, u64 step,
                              const u8* __restrict__ action, u64* __restrict__ claims) {
    const TmPushLattice g = {nz, ny, nx, offsets, n_offsets, D, seed, step};
    TM_FOR_EACH(s, n_sites) {
        const u8 a = action[s];
        if (tm_push_is(a, TM_ACT_PUSH_WON) || tm_push_is(a, TM_ACT_PUSH_LOST)) {
            claims[s] = 0;
            TmPushWalk w;
            for (long long v = tm_push_first(&w, g, s, cap); v != TM_OUTSIDE;
                 v = tm_push_next(&w, g, s))
                claims[v] = 0;
        }
    }
}
