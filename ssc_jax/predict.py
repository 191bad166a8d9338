"""Top-5 classes of images, from an exported model through ONNX Runtime.

    python -m ssc_jax.predict --model=DIR IMAGE [IMAGE ...]

DIR is what `python -m ssc_jax.export` wrote. Each image is prepared as
DIR/export.json's 'preprocessing' says (grayscale or RGB; resized to the
input size, or for ImageNet its shorter side to 256 and the central crop;
(pixel / 255 - mean) / std), and the five most probable classes are printed
with their softmax probabilities. Needs the '[export]' extra.
"""

import json
import pathlib
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
from absl import app
from absl import flags
from PIL import Image

from ssc_jax import console
from ssc_jax import deploy
from ssc_jax import errors

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags; defined only when this module runs as a program."""
  flags.DEFINE_string('model', None, 'A directory written by python -m ssc_jax.export.')
  flags.DEFINE_integer('top', 5, 'How many classes to print per image.')
  flags.mark_flags_as_required(['model'])


def load_export(directory: str) -> Dict[str, Any]:
  """export.json of an export directory; a UserError where there is none."""
  path = pathlib.Path(directory) / deploy.METADATA_FILE
  if not path.exists() or not (pathlib.Path(directory) / deploy.ONNX_FILE).exists():
    raise errors.UserError(f'--model={directory}: no {deploy.METADATA_FILE} and '
                           f'{deploy.ONNX_FILE} there; write them with python -m '
                           'ssc_jax.export --workdir=RUN --out=DIR')
  return json.loads(path.read_text())


def prepare(path: str, metadata: Dict[str, Any]) -> np.ndarray:
  """One image file as the model's (H, W, C) float32 input, as export.json says."""
  steps = metadata['preprocessing']
  height, width, channels = metadata['input']['shape'][1:]
  try:
    with Image.open(path) as image:
      image = image.convert('L' if steps['color'] == 'grayscale' else 'RGB')
      if 'resize_shorter_side' in steps:
        side = steps['resize_shorter_side']
        scale = side / min(image.size)
        image = image.resize((max(side, round(image.width * scale)),
                              max(side, round(image.height * scale))), Image.BILINEAR)
        left, top = (image.width - width) // 2, (image.height - height) // 2
        image = image.crop((left, top, left + width, top + height))
      elif image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
      pixels = np.asarray(image, np.float32).reshape(height, width, channels)
  except OSError as error:
    raise errors.UserError(f'{path}: cannot read the image ({error})') from None
  return ((pixels * steps['scale'] - np.asarray(steps['mean'], np.float32))
          / np.asarray(steps['std'], np.float32))


def predict(directory: str, paths: Sequence[str], top: int = 5
            ) -> List[List[Tuple[str, float]]]:
  """For each image, its `top` (class name, probability) pairs, most probable first."""
  metadata = load_export(directory)
  batch = np.stack([prepare(p, metadata) for p in paths])
  session = deploy.onnx_session(pathlib.Path(directory) / deploy.ONNX_FILE)
  fixed = metadata['input']['batch']
  if fixed != 'dynamic':  # a model exported for one batch size: run in chunks of it
    padded = -(-len(batch) // fixed) * fixed
    batch = np.concatenate([batch, np.zeros((padded - len(batch),) + batch.shape[1:],
                                            np.float32)])
    logits = np.concatenate([session.run(None, {'image': batch[i:i + fixed]})[0]
                             for i in range(0, padded, fixed)])[:len(paths)]
  else:
    logits = session.run(None, {'image': batch})[0]
  logits = logits - logits.max(axis=-1, keepdims=True)
  probabilities = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
  names = metadata['class_names'] or [str(i) for i in range(probabilities.shape[-1])]
  return [[(names[i], float(row[i])) for i in np.argsort(-row)[:top]] for row in probabilities]


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError('give one or more image files after the flags')
  for path, ranked in zip(paths, predict(FLAGS.model, paths, FLAGS.top)):
    print(f'{path}: ' + ', '.join(f'{name} {probability:.3f}' for name, probability in ranked))


if __name__ == '__main__':
  define_flags()
  console.run(main)
