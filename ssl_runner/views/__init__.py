"""Views: everything that turns a uint8 image batch into a method's inputs.

A view maker (`protocol.ViewMaker`) declares how many tensors it makes per
batch (`num_views`) and makes them (`views(images, generator)`); the data
loaders (per image, `data.views_on=cpu`) and `BaseMethod.make_views`
(batched on the device, `views_on=device`) call it without knowing which
method it serves. Layout:

- maths on pixels: `color` (grayscale, HSV, colour adjustments), `lab`
  (sRGB <-> CIE Lab), `ab_bins` (colorization's quantised ab space),
  `pixels` (uint8 -> [0, 1], normalisation, the unaugmented evaluation view);
- augmentations with sampled parameters: `augmentation` (the base class and
  samplers), `crop` (random resized crop), `augmentations` (SimCLR's family
  and LooC's rotation), `study_augmentations` (cutout, Sobel, Gaussian noise
  and the names of SimCLR's augmentation-composition study), `exemplar`
  (Exemplar-CNN's strong transformations);
- `recipe`: `ViewRecipe`, a chain of augmentations, and the one `cfg.views`
  describes (SimCLR's family, or the study's composition);
- the pretext tasks' view makers: `jigsaw` (+ `jigsaw_permutations`),
  `relative_location` (+ `chromatic_guards`), `colorization`, `masks`
  (context-encoder masks), `leave_one_out` (LooC), `pirl`.
"""

from ssl_runner.views.protocol import ViewMaker

__all__ = ["ViewMaker"]
