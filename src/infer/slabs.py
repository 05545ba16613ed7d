"""Whole-volume measurements of a label map done a slab of first-axis rows at a time.

A 1000 x 512 x 512 label map is 262 MB as uint8, but a boolean test of it is as big again, an int64
count of it 8x and ``ndimage.label``'s int32 components 4x. The case report and the postprocessing only
need per-slice counts and the largest connected component, so they get them here with slab-sized
temporaries: counts are integer sums (exact, so equal to the whole-volume result), and components are
labelled per slab and joined across slab borders (face connectivity, as ``ndimage.label``'s default)
with a graph of the per-slab components. The largest component is the one ``ndimage.label`` + ``argmax``
of the sizes would pick: ties go to the component whose first voxel comes first in C order.
"""
from typing import Callable, Iterator, Optional, Tuple

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# voxels of one slab: 64 rows of 512 x 512 (16 MB of uint8 labels, 64 MB of int32 components)
SLAB_VOXELS = 64 * 512 * 512

Test = Callable[[np.ndarray], np.ndarray]


def slab_bounds(shape, rows: Optional[int] = None) -> list:
    """(start, stop) of the first-axis slabs of a volume of ``shape``: ``rows`` each, or SLAB_VOXELS' worth."""
    if rows is None:
        rows = max(1, SLAB_VOXELS // max(1, int(np.prod([int(s) for s in shape[1:]]))))
    if int(rows) < 1:
        raise ValueError(f"slab rows must be positive, got {rows}")
    rows = int(rows)
    return [(start, min(start + rows, int(shape[0]))) for start in range(0, int(shape[0]), rows)]


def axis_profile(volume: np.ndarray, axis: int, test: Test, rows: Optional[int] = None) -> np.ndarray:
    """``np.count_nonzero(test(volume), axis=<the other axes>)``, computed slab by slab."""
    other = tuple(a for a in range(volume.ndim) if a != axis)
    counts = np.zeros(volume.shape[axis], dtype=np.intp)
    for start, stop in slab_bounds(volume.shape, rows):
        part = np.count_nonzero(test(volume[start:stop]), axis=other)
        if axis == 0:
            counts[start:stop] += part
        else:
            counts += part
    return counts


def _label_sizes(labels: np.ndarray, count: int) -> np.ndarray:
    """Voxels per label 1..count; ``np.bincount`` casts its input to int64, so a few rows at a time."""
    sizes = np.zeros(count + 1, dtype=np.int64)
    rows = max(1, (1 << 20) // max(1, labels[0].size))
    for start in range(0, labels.shape[0], rows):
        sizes += np.bincount(labels[start:start + rows].ravel(), minlength=count + 1)
    return sizes[1:]


class Components:
    """Face-connected components of ``test(volume)``, labelled slab by slab and joined across slab borders.

    Each slab's components are nodes (numbered slab after slab, in ``ndimage.label``'s order, i.e. by first
    voxel in C order); touching nodes of neighbouring slabs are edges; a component is a connected set of
    nodes. Only per-node arrays are kept: slabs are labelled again when a component's voxels are needed.
    """

    def __init__(self, volume: np.ndarray, test: Test, rows: Optional[int] = None):
        self.volume, self.test = volume, test
        self.bounds = slab_bounds(volume.shape, rows)
        self.offsets, sizes, sources, targets = [], [], [], []
        total, previous = 0, None
        for start, stop in self.bounds:
            labels, count = ndimage.label(test(volume[start:stop]))
            sizes.append(_label_sizes(labels, count))
            if previous is not None:
                last, last_offset = previous
                touching = (last > 0) & (labels[0] > 0)
                sources.append(last[touching].astype(np.int64) + (last_offset - 1))
                targets.append(labels[0][touching].astype(np.int64) + (total - 1))
            previous = (labels[-1].copy(), total)
            self.offsets.append(total)
            total += count
            del labels
        self.offsets.append(total)
        node_sizes = np.concatenate(sizes).astype(np.int64) if sizes else np.zeros(0, np.int64)
        if sources and sum(len(s) for s in sources):
            edges_from, edges_to = np.concatenate(sources), np.concatenate(targets)
            graph = coo_matrix((np.ones(len(edges_from), np.int8), (edges_from, edges_to)), shape=(total, total))
            self.count, self.of_node = connected_components(graph, directed=False)
        else:
            self.count, self.of_node = total, np.arange(total)
        self.sizes = np.zeros(self.count, np.int64)
        np.add.at(self.sizes, self.of_node, node_sizes)
        # nodes are in C order of their first voxels, so a component's first node holds its first voxel
        self.first_node = np.full(self.count, total, np.int64)
        np.minimum.at(self.first_node, self.of_node, np.arange(total))

    def largest(self) -> Optional[int]:
        """The component with the most voxels (ties: the earliest first voxel); None when there is none."""
        if self.count == 0:
            return None
        candidates = np.flatnonzero(self.sizes == self.sizes.max())
        return int(candidates[np.argmin(self.first_node[candidates])])

    def masks(self, component: int, every_slab: bool = False) -> Iterator[Tuple[int, int, np.ndarray, np.ndarray]]:
        """(start, stop, voxels of ``component``, voxels of ``test``) per slab holding the component (every
        slab with ``every_slab``). Read the slab before changing it: its labels are computed again here."""
        for index, (start, stop) in enumerate(self.bounds):
            first, last = self.offsets[index], self.offsets[index + 1]
            holds = bool(np.any(self.of_node[first:last] == component))
            if not holds and not every_slab:
                continue
            selected = self.test(self.volume[start:stop])
            if not holds:
                yield start, stop, np.zeros_like(selected, dtype=bool), selected
                continue
            labels, _ = ndimage.label(selected)
            lookup = np.zeros(last - first + 1, dtype=bool)
            lookup[1:] = self.of_node[first:last] == component
            yield start, stop, lookup[labels], selected
