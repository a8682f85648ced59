"""Write keras.applications models of families outside nnmeter's evaluation set, as .tflite, for
``nnmeter-build evaluate WS --models DIR`` (one subfolder per family): a check on architectures the campaign
never saw, neither in its kernels nor in its calibration or evaluation.

    .venv/bin/python bench/heldout_models.py --out heldout            # 14 models, ~1.3 GB, a few minutes
    .venv/bin/nnmeter-build evaluate WS --models heldout              # measure, predict, compare

Models are built with ``weights=None`` (latency does not depend on the values) and batch 1, as a device runs
them; sizes are chosen so that each runs in well under a second here. InceptionV3 and InceptionResNetV2 need
the predictor's stand-in for non-square convs (1x7, 7x1; :mod:`nnmeter.predictor.detection`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
from pathlib import Path

#: (keras.applications constructor, input resolution)
MODELS = (
    ("Xception", 160),
    ("ResNet50V2", 160),
    ("ResNet101", 160),
    ("DenseNet169", 160),
    ("EfficientNetB1", 192),
    ("EfficientNetV2B0", 192),
    ("EfficientNetV2B1", 160),
    ("MobileNetV3Large", 160),
    ("ResNet152V2", 128),
    ("DenseNet201", 128),
    ("EfficientNetB2", 160),
    ("MobileNetV2", 128),
    ("InceptionV3", 160),
    ("InceptionResNetV2", 128),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("heldout"), help="folder to write (default: heldout)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    for name, hw in MODELS:
        family = name.lower()
        path = args.out / family / f"{family}_{hw}.tflite"
        if path.is_file():
            continue
        # the minimalistic MobileNetV3 (no SE, no hard swish): not the evaluation set's MobileNetV3 variant
        extra = {"minimalistic": True} if name == "MobileNetV3Large" else {}
        net = getattr(keras.applications, name)(weights=None, input_shape=(hw, hw, 3), **extra)
        inputs = keras.Input((hw, hw, 3), batch_size=1)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.redirect_stdout(io.StringIO()):  # the converter prints every captured tensor
            path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, net(inputs))).convert())
        print(f"{path} ({path.stat().st_size / 1e6:.0f} MB)", flush=True)


if __name__ == "__main__":
    main()
