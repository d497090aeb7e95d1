/* pins.cuh -- which voxels the field solver pins (Dirichlet nodes), shared by the field kernels
 * (fields.cu) and the multigrid preconditioner (multigrid.cuh). */
#ifndef TM_PINS_CUH
#define TM_PINS_CUH

#include "common.cuh"

/* Pin code of a voxel a stirred bath holds (tmesim.steps.medium.BATH): the field kernels that
 * pin voxels read a "pin code" array, the occupant kind with this code at held medium voxels
 * (the kind itself when the medium is not stirred). No occupant kind uses the code. */
#define TM_PIN_BATH 255

/* Whether a voxel of pin code k is a Dirichlet node: a vessel, or medium held by the bath. */
TM_HD bool tm_pinned(u8 k) { return k == TM_VESSEL || k == TM_PIN_BATH; }

#endif /* TM_PINS_CUH */
