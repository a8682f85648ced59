"""How much of each keras.applications architecture a predictor covers, and what it cannot predict.

Each model is built with ``weights=None`` and converted to .tflite as a user would convert it: without
``batch_size=1``, so reshapes compute their shapes at run time (``--formats`` adds the ONNX file tf2onnx
makes of it, and the keras.Model itself). Prints per model and format the share of kernel nodes predicted,
the predicted latency and the reasons for what is left out.

    .venv/bin/python bench/coverage.py --predictor WS/predictor      # 17 architectures, a few minutes
    .venv/bin/python bench/coverage.py --predictor WS/predictor --mobile --formats tflite onnx keras
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
    parser.add_argument("--mobile", action="store_true", help="only the mobile architectures the quickstart covers")
    parser.add_argument(
        "--formats", nargs="+", default=["tflite"], choices=["tflite", "onnx", "keras"], help="default: tflite"
    )
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    import nnmeter
    from nnmeter.evaluation.zoo import MOBILE_APPLICATIONS

    predictor = nnmeter.load_predictor(args.predictor)
    hw = args.resolution
    with tempfile.TemporaryDirectory() as tmp:
        for name in MOBILE_APPLICATIONS if args.mobile else ARCHITECTURES:
            net = getattr(keras.applications, name)(weights=None, input_shape=(hw, hw, 3))
            for fmt in args.formats:
                model = net if fmt == "keras" else Path(tmp) / f"{name}.{fmt}"
                # the converters print every captured tensor
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    if fmt == "tflite":
                        model.write_bytes(tf.lite.TFLiteConverter.from_keras_model(net).convert())
                    elif fmt == "onnx":
                        import tf2onnx

                        tf2onnx.convert.from_keras(net, output_path=str(model))
                shape = (1, hw, hw, 3) if fmt == "tflite" else None
                result = predictor.predict(model if fmt == "keras" else str(model), shape, strict=False)
                reasons = sorted({item.reason for item in result.unsupported})
                print(
                    f"{name:18s} {fmt:6s} coverage {100 * result.coverage:5.1f} %  {result.latency_ms:8.2f} ms  "
                    + "; ".join(reasons)[:300],
                    flush=True,
                )
                if fmt != "keras":
                    model.unlink()


if __name__ == "__main__":
    main()
