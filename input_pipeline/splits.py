"""Duplicate detection and the stratified k-fold split manifest.

Duplicates: two images are duplicates when their renderings at a fixed size
(`HASH_RENDER_SIZE`, grayscale, aspect kept, padded: `preprocess.to_square`
of the decoded original) are identical (sha256) or their 256-bit perceptual
hashes (imagehash.phash, hash_size=16) differ in <= `data.hash_threshold`
bits. The rendering does not depend on `data.storage_size`, so neither do
the duplicate groups nor, through them, the folds: hashed on 64-px stored
pixels the real head_ct set showed 5 of its 8 groups and the grouped folds
changed with the stored size, which leaked re-exported slices across
train/test. The 256-bit hash is used because CT slices all share one coarse
layout (a bright ring on black): with the usual 64-bit hash, unrelated
slices of the real head_ct set (even of different classes) and synthetic
phantoms land within 4 bits of each other. At 256 bits the re-crops /
re-exports in head_ct are <= 20 bits apart, and related slices (the same
lesion a level apart, adjacent slices with consecutive ids, one scan's
panels under both labels) lie at 26-38 bits; the median pair is ~110 bits
apart and 0.1 % of all pairs are within 36. The default threshold, 40,
groups all of these (23 groups, 49 images, at most 3 per group in head_ct):
a false group only costs a little stratification balance, a missed one
leaks a scan across train/test. Duplicate pairs are merged with union-find
into groups.

Splits: stratified k-fold over the labels, seeded by `data.split_seed`; each
training split gives up a stratified validation carve-out of
`data.val_fraction`. With `data.duplicates='group'` (the default) each
duplicate group is one unit (StratifiedGroupKFold), so a group can never
straddle train/val/test. With 'error' the split ignores groups and any group
that ends up in two roles of a fold is an error naming its ids. The manifest
is a function of the ids, labels, hashes and split settings only; its
`split_fingerprint` names it (the sampler and classifier compare it).

Patients (volume sources: many slices per patient): every image carries its
patient, and a patient's images are always one unit, whatever the policy;
with 'group' a unit is the union of patient and duplicate groupings (a
duplicate pair across two patients joins them). So a patient can never be in
two roles of a fold; `check_patients` verifies it and the manifest records
`patients` ({id: patient}).
"""

import hashlib
import json

import imagehash
import numpy as np
from PIL import Image
from sklearn import model_selection

from input_pipeline.errors import UserInputError

POLICIES = ('group', 'error')
HASH_SIZE = 16  # 16 x 16 = 256-bit perceptual hash
HASH_BYTES = HASH_SIZE * HASH_SIZE // 8
# Side of the fixed rendering that is hashed (the threshold was tuned here).
HASH_RENDER_SIZE = 256


def image_hashes(original: np.ndarray) -> tuple[str, np.ndarray]:
  """(sha256 hex, packed 256-bit phash) of an original uint8 [H, W(, C)].

  Both are taken on the fixed rendering `to_square(original,
  HASH_RENDER_SIZE)`, averaged over channels (DICOM 'multi' windows).
  """
  from input_pipeline import preprocess  # pylint: disable=g-import-not-at-top
  x = preprocess.to_square(original, HASH_RENDER_SIZE)
  sha = hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()
  gray = x[..., 0] if x.shape[-1] == 1 else np.rint(
      x.mean(-1)).astype(np.uint8)
  bits = imagehash.phash(Image.fromarray(gray), hash_size=HASH_SIZE).hash
  return sha, np.packbits(bits.reshape(-1))


def _union_find(n: int):
  """(find, union) over 0 .. n-1; every set's root is its smallest index."""
  parent = list(range(n))

  def find(i):
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  def union(i, j):
    a, b = find(i), find(j)
    parent[max(a, b)] = min(a, b)

  return find, union


def duplicate_groups(shas: list[str], phashes: np.ndarray, ids: list[str],
                     threshold: int) -> list[list[str]]:
  """Groups (size >= 2) of exact or near-duplicate images, by id.

  `shas` and `phashes` (packed bits, [N, HASH_BYTES]) from `image_hashes`.
  """
  n = len(ids)
  find, union = _union_find(n)
  bits = np.unpackbits(np.asarray(phashes, np.uint8), axis=-1)
  first = {}
  for i, s in enumerate(shas):
    union(i, first.setdefault(s, i))
  if threshold >= 0 and n > 1:
    b = bits.astype(np.int32)
    # Hamming distances in row blocks: bits minus agreements (ones + zeros).
    for start in range(0, n, 1024):
      blk = b[start:start + 1024]
      dist = b.shape[1] - (blk @ b.T + (1 - blk) @ (1 - b).T)
      for i, j in zip(*np.nonzero(dist <= threshold)):
        if start + i < j:
          union(start + i, j)
  groups = {}
  for i in range(n):  # members and groups in source (id) order
    groups.setdefault(find(i), []).append(i)
  return [[ids[i] for i in g]
          for g in sorted(groups.values(), key=lambda g: g[0]) if len(g) > 1]


def _splitter(policy: str, n_splits: int, seed: int):
  # With 'error' every image is its own group, so StratifiedGroupKFold
  # splits image by image.
  del policy
  return model_selection.StratifiedGroupKFold(
      n_splits=n_splits, shuffle=True, random_state=seed)


def _carve_val(train: np.ndarray, labels: np.ndarray, units: np.ndarray,
               fraction: float, rng: np.random.Generator,
               closest: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Stratified, unit-aware validation carve-out from `train` indices.

  Each class c gets a target of round(fraction * its training images)
  (at least 1). Per class, whole units (duplicate groups or single images)
  are drawn in a seeded random order until the class reaches its target. A
  unit is skipped when taking it would put any class more than one image
  over its target (duplicate groups can mix classes and be larger than one
  image), and each class keeps at least one unit for training. So every
  class ends within one image of its target whenever enough small units
  exist. `closest` (patient units, typically far larger than one image):
  a unit is taken instead when it brings the classes closer to their
  targets, in total relative distance (so a rare class weighs as much as a
  common one).
  """
  if fraction <= 0:
    return train, np.zeros(0, np.int64)
  classes = np.unique(labels[train])
  target = {c: max(1, round(fraction * int((labels[train] == c).sum())))
            for c in classes}
  taken = dict.fromkeys(classes, 0)
  val, taken_units = set(), set()
  for c in classes:
    members = train[labels[train] == c]
    ids = np.unique(units[members])
    rng.shuffle(ids)
    left = sum(u not in taken_units for u in ids)  # c's units in training
    for u in ids:
      if taken[c] >= target[c] or left <= 1:
        break
      if u in taken_units:
        continue
      sel = train[units[train] == u]  # the whole unit, whatever its labels
      adds = {k: int((labels[sel] == k).sum()) for k in classes}
      if closest:
        miss = lambda extra: sum(abs(taken[k] + extra.get(k, 0) - target[k])
                                 / target[k] for k in classes)
        if miss(adds) >= miss({}):
          continue
      elif any(taken[k] + adds[k] > target[k] + 1
               for k in classes if adds[k]):
        continue
      taken_units.add(u)
      val.update(sel.tolist())
      left -= 1
      for k in classes:
        taken[k] += adds[k]
  val = np.array(sorted(val), np.int64)
  return np.setdiff1d(train, val), val


def split_fingerprint(manifest: dict) -> str:
  """Short sha256 of a manifest's folds, groups and settings."""
  keys = ('num_folds', 'split_seed', 'val_fraction', 'duplicates_policy',
          'folds', 'duplicate_groups')
  blob = json.dumps({k: manifest[k] for k in keys}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _join_patients(units: np.ndarray, patients: list[str]) -> np.ndarray:
  """Units merged with patient groups (root = first index)."""
  find, union = _union_find(len(units))
  for keys in (units.tolist(), list(patients)):
    first = {}
    for i, k in enumerate(keys):
      union(i, first.setdefault(k, i))
  return np.array([find(i) for i in range(len(units))])


def make_manifest(ids: list[str], labels: np.ndarray,
                  dup_groups: list[list[str]], num_folds: int,
                  val_fraction: float, seed: int, policy: str,
                  patients: list[str] | None = None) -> dict:
  """The split manifest (see `dataset.PreparedData.manifest`).

  patients: each id's patient (volume sources), or None (one image each).
  """
  if policy not in POLICIES:
    raise UserInputError(
        f'config.data.duplicates={policy!r} is not one of {list(POLICIES)}')
  if not 0 <= val_fraction < 1:
    raise UserInputError(
        f'config.data.val_fraction={val_fraction} must be in [0, 1)')
  n = len(ids)
  labels = np.asarray(labels)
  pos = {i: k for k, i in enumerate(ids)}
  groups = np.arange(n)
  for g in dup_groups:
    for i in g:
      groups[pos[i]] = pos[g[0]]
  unit_groups = groups if policy == 'group' else np.arange(n)
  if patients is not None:
    unit_groups = _join_patients(unit_groups, patients)
  what = ('independent images' if patients is None else
          'patients (or groups of patients sharing duplicates)')
  if num_folds < 2:
    raise UserInputError(f'config.data.num_folds={num_folds} must be >= 2')
  # Every class needs at least one unit in each test fold.
  for c in np.unique(labels):
    units = len(np.unique(unit_groups[labels == c]))
    if units < num_folds:
      raise UserInputError(
          f'config.data.num_folds={num_folds} is more than the {units} '
          f'{what} of class {int(c)}')
  outer = _splitter(policy, num_folds, seed)
  folds = []
  for k, (train, test) in enumerate(
      outer.split(np.zeros(n), labels, unit_groups)):
    train, val = _carve_val(train, labels, unit_groups, val_fraction,
                            np.random.default_rng([seed, k]),
                            closest=patients is not None)
    folds.append({role: sorted((ids[i] for i in idx), key=pos.get)
                  for role, idx in (('train', train), ('val', val),
                                    ('test', test))})
  manifest = {'num_folds': num_folds, 'split_seed': seed,
              'val_fraction': val_fraction, 'duplicates_policy': policy,
              'folds': folds, 'duplicate_groups': dup_groups}
  if patients is not None:
    manifest['patients'] = dict(zip(ids, patients))
  check_straddles(manifest)
  check_patients(manifest)
  manifest['split_fingerprint'] = split_fingerprint(manifest)
  return manifest


def check_straddles(manifest: dict) -> None:
  """UserInputError if a duplicate group spans two roles of any fold."""
  for k, fold in enumerate(manifest['folds']):
    role = {i: r for r, members in fold.items() for i in members}
    for g in manifest['duplicate_groups']:
      roles = {role[i] for i in g}
      if len(roles) > 1:
        raise UserInputError(
            f'duplicate images {g} straddle {sorted(roles)} in fold {k}; '
            f"set config.data.duplicates='group' to keep duplicates "
            f'together, or remove them')


def check_patients(manifest: dict) -> None:
  """RuntimeError if a patient's images are in two roles of any fold.

  Cannot happen by construction (patients are split units); this guards
  the construction. No-op for manifests without `patients`.
  """
  patients = manifest.get('patients')
  if not patients:
    return
  for k, fold in enumerate(manifest['folds']):
    seen = {}
    for role, members in fold.items():
      for i in members:
        other = seen.setdefault(patients[i], role)
        if other != role:
          raise RuntimeError(
              f'patient {patients[i]!r} is in both {other} and {role} of '
              f'fold {k}')
