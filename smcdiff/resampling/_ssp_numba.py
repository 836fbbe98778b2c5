"""Numba kernel of the Srinivasan sampling process (SSP); sequential, so it runs on the host."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=False)
def ssp_counts(nw: np.ndarray, u: np.ndarray, n: int) -> np.ndarray:
    r"""Offspring counts ``(G, N)`` int64 from expected counts ``nw = n W`` ``(G, N)`` float64.

    Each count starts at :math:`\lfloor nW_i \rfloor`. One fractional part :math:`a` (particle
    ``i``) stays open; the next particle ``j`` with fraction :math:`b > 0` is paired with it
    using the uniform ``u[g, j]``, and the pair moves to one of two states with the same mean:

    * :math:`a + b < 1`: :math:`(a + b, 0)` w.p. :math:`a/(a+b)`, else :math:`(0, a + b)`;
    * :math:`a + b \ge 1`: :math:`(1, a + b - 1)` w.p. :math:`(1-b)/(2-a-b)`, else
      :math:`(a + b - 1, 1)`.

    The coordinate that reaches 0 or 1 is final, the other stays open, so every step keeps
    :math:`E[\mathrm{count}_i] = nW_i`. The fractions sum to an integer, hence the last open one is
    0 in exact arithmetic; it is given ``n - total`` (0, or 1 after round-off) so every row sums
    to exactly ``n``.
    """
    n_groups, n_particles = nw.shape
    counts = np.empty((n_groups, n_particles), np.int64)
    for g in range(n_groups):
        total = 0
        i = -1  # particle holding the open fraction a
        a = 0.0
        for j in range(n_particles):
            base = np.floor(nw[g, j])
            counts[g, j] = np.int64(base)
            total += counts[g, j]
            b = nw[g, j] - base
            if b <= 0.0:
                continue
            if i < 0:
                i, a = j, b
                continue
            s = a + b
            if s < 1.0:
                if u[g, j] * s >= a:  # j takes the whole fraction; i is final at its floor
                    i = j
                a = s
            else:
                if u[g, j] * (2.0 - s) < 1.0 - b:  # i rounds up, j keeps s - 1
                    counts[g, i] += 1
                    i = j
                else:  # j rounds up, i keeps s - 1
                    counts[g, j] += 1
                total += 1
                a = s - 1.0
        if i < 0:  # every n W_i was an integer
            i = np.argmax(nw[g])
        counts[g, i] += n - total
    return counts
