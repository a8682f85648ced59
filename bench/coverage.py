"""How much of each keras.applications architecture a predictor covers, and what it cannot predict.

Each model is built with ``weights=None`` and converted to .tflite as a user would convert it: without
``batch_size=1``, so reshapes compute their shapes at run time. Prints per model the share of kernel
nodes predicted, the predicted latency and the reasons for what is left out.

    .venv/bin/python bench/coverage.py --predictor WS/predictor      # 17 architectures, a few minutes
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
from pathlib import Path

ARCHITECTURES = (
    "Xception",
    "VGG16",
    "ResNet50V2",
    "ResNet101",
    "InceptionV3",
    "InceptionResNetV2",
    "DenseNet169",
    "NASNetMobile",
    "EfficientNetB1",
    "EfficientNetV2B0",
    "EfficientNetV2S",
    "ConvNeXtTiny",
    "MobileNetV3Large",
    "MobileNetV3Small",
    "MobileNet",
    "MobileNetV2",
    "DenseNet121",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictor", required=True, help="a predictor folder or installed name")
    parser.add_argument("--resolution", type=int, default=160, help="input height = width (default 160)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    import nnmeter

    predictor = nnmeter.load_predictor(args.predictor)
    hw = args.resolution
    with tempfile.TemporaryDirectory() as tmp:
        for name in ARCHITECTURES:
            net = getattr(keras.applications, name)(weights=None, input_shape=(hw, hw, 3))
            path = Path(tmp) / f"{name}.tflite"
            with contextlib.redirect_stdout(io.StringIO()):  # the converter prints every captured tensor
                path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(net).convert())
            result = predictor.predict(str(path), strict=False)
            reasons = sorted({item.reason for item in result.unsupported})
            print(
                f"{name:18s} coverage {100 * result.coverage:5.1f} %  {result.latency_ms:8.2f} ms  "
                + "; ".join(reasons)[:300],
                flush=True,
            )
            path.unlink()


if __name__ == "__main__":
    main()
