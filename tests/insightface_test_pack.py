"""Build a tiny but real insightface model pack (two ONNX graphs) for offline tests.

insightface's model packs (buffalo_l, antelopev2) only download from the internet, so the tests
build one of the same form and run insightface's real loading code on it (FaceAnalysis ->
model_zoo.ModelRouter -> SCRFD / ArcFaceONNX, norm_crop alignment):

- det_tiny.onnx: an SCRFD-layout detector. Input [1, 3, height, width]; 9 rank-2 outputs in
  SCRFD order: scores for strides 8/16/32 ([N, 1]), box distances ([N, 4]), 5 keypoints
  ([N, 10]), with 2 anchors per location (N = 2 * H/s * W/s). insightface routes any graph with
  >= 5 outputs to SCRFD and reads 9 outputs as "3 strides, 2 anchors, with keypoints".
  What it "detects": a FACE_SIZE x FACE_SIZE (in detector-input pixels) block of non-black
  pixels on a black background. The score at an anchor is (fraction of bright pixels in the
  FACE_SIZE window centred on it) ** 16, so it peaks at the block centre; the box is the
  FACE_SIZE square around the anchor and the keypoints are ArcFace's 5-point template scaled
  to that square, so norm_crop maps exactly the block to the 112x112 crop.
- rec_tiny.onnx: a 112x112 ArcFace-shaped recogniser: 8x8 average pooling, flatten, a fixed
  random Gemm to a 64-d embedding that is NOT unit length (the caller must normalise).
  Its node names avoid "Sub"/"Mul", so insightface uses ArcFace's 127.5/127.5 input scaling.
- lmk_tiny.onnx (only when asked): a 192x192-input model with one 3309-value output, which
  insightface routes to its Landmark class as "landmark_3d_68" (buffalo_l's 1k3d68.onnx has
  that form); it answers the same 68 landmarks for every face, so a test can place a face
  turned by a known yaw and read it back through insightface's own Landmark.get.

Test images: `face_patch(seed)` is an "identity" (random 8x8-pixel blocks, values 64..255);
`place_faces` puts patches on a black canvas. With a canvas whose longer side is L, a patch of
FACE_SIZE * L / 640 pixels becomes FACE_SIZE pixels at insightface's 640 detection size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

FACE_SIZE = 128  # face block size in detector-input pixels (at det size 640)
EMBEDDING_DIM = 64
STRIDES = (8, 16, 32)
ANCHORS = 2
OPSET = 13
IR_VERSION = 8
# insightface.utils.face_align.arcface_dst: the 5-point template of the 112x112 ArcFace crop.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


def _detector_model():
    from onnx import TensorProto, helper

    nodes, inits = [], []

    def const(name, values, dtype=np.float32):
        array = np.asarray(values, dtype=dtype)
        kind = TensorProto.FLOAT if dtype == np.float32 else TensorProto.INT64
        inits.append(helper.make_tensor(name, kind, array.shape, array.ravel().tolist()))
        return name

    const("c_offset", 0.9)
    const("c_gain", 10.0)
    const("c_zero", 0.0)
    const("c_one", 1.0)
    const("shape_col", [-1, 1], np.int64)
    nodes += [
        helper.make_node("ReduceMean", ["input.1"], ["gray"], axes=[1], keepdims=1, name="gray"),
        helper.make_node("Add", ["gray", "c_offset"], ["shifted"], name="shift"),
        helper.make_node("Mul", ["shifted", "c_gain"], ["gained"], name="gain"),
        helper.make_node("Clip", ["gained", "c_zero", "c_one"], ["mask"], name="mask"),
        # 8x8 cells first: the big windows below then cost 64x less and give the same averages.
        helper.make_node("AveragePool", ["mask"], ["cells"], kernel_shape=[8, 8], strides=[8, 8],
                         name="cells"),
    ]
    scores, boxes, points = [], [], []
    half = FACE_SIZE // 2
    # Keypoints relative to the box centre, in detector pixels.
    kps = (ARCFACE_TEMPLATE / 112.0 * FACE_SIZE - half).ravel()
    for stride in STRIDES:
        s = str(stride)
        pool = f"pool{s}"
        # Window of FACE_SIZE pixels centred on the anchor (x = j * stride, y = i * stride).
        window, step, begin = FACE_SIZE // 8, stride // 8, half // 8
        nodes.append(helper.make_node(
            "AveragePool", ["cells"], [pool], kernel_shape=[window, window],
            strides=[step, step], pads=[begin, begin, begin - step, begin - step],
            count_include_pad=1, name=pool))
        power = pool
        for step in range(4):  # fraction ** 16
            nodes.append(helper.make_node("Mul", [power, power], [f"p{s}_{step}"],
                                          name=f"square{s}_{step}"))
            power = f"p{s}_{step}"
        nodes += [
            helper.make_node("Reshape", [power, "shape_col"], [f"col{s}"], name=f"col{s}"),
            helper.make_node("Concat", [f"col{s}", f"col{s}"], [f"pair{s}"], axis=1,
                             name=f"pair{s}"),
            helper.make_node("Reshape", [f"pair{s}", "shape_col"], [f"score_{s}"],
                             name=f"score{s}"),
            helper.make_node("Mul", [f"score_{s}", "c_zero"], [f"zeros{s}"], name=f"zeros{s}"),
            helper.make_node("Add", [f"zeros{s}", const(f"box{s}", [[half / stride] * 4])],
                             [f"bbox_{s}"], name=f"bbox{s}"),
            helper.make_node("Add", [f"zeros{s}", const(f"kps{s}", [kps / stride])],
                             [f"kps_{s}"], name=f"kps{s}"),
        ]
        scores.append(helper.make_tensor_value_info(f"score_{s}", TensorProto.FLOAT, ["n" + s, 1]))
        boxes.append(helper.make_tensor_value_info(f"bbox_{s}", TensorProto.FLOAT, ["n" + s, 4]))
        points.append(helper.make_tensor_value_info(f"kps_{s}", TensorProto.FLOAT, ["n" + s, 10]))
    graph = helper.make_graph(
        nodes, "scrfd_layout_test_detector",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])],
        scores + boxes + points, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                             ir_version=IR_VERSION, producer_name="insightface_test_pack")


def _recognizer_model(seed: int = 1234):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    features = 3 * (112 // 8) ** 2
    weight = rng.normal(0.0, 1.0, (features, EMBEDDING_DIM)).astype(np.float32) * 3.0
    nodes = [
        helper.make_node("AveragePool", ["data"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8],
                         name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_weight"], ["fc1"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "arcface_shaped_test_recognizer",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["batch", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["batch", EMBEDDING_DIM])],
        [numpy_helper.from_array(weight, "fc_weight")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                             ir_version=IR_VERSION, producer_name="insightface_test_pack")


LANDMARK_INPUT = 192  # insightface routes a 192x192 input to its Landmark model
LANDMARK_ROWS = 1103  # 1103 x 3 = 3309 outputs: "landmark_3d_68" (the last 68 rows are used)


def _landmark_model(points: np.ndarray):
    """A 1k3d68-shaped landmark model whose answer is always `points` (68 x 2, pixels of the
    192x192 face crop insightface's Landmark.get makes around the detected box)."""
    from onnx import TensorProto, helper, numpy_helper

    points = np.asarray(points, dtype=np.float32)
    assert points.shape == (68, 2)
    rows = np.zeros((LANDMARK_ROWS, 3), dtype=np.float32)
    # Landmark.get: pred[:, :2] = (pred[:, :2] + 1) * (192 // 2), so store crop / 96 - 1.
    rows[-68:, :2] = points / (LANDMARK_INPUT // 2) - 1.0
    nodes = [
        helper.make_node("ReduceMean", ["data"], ["level"], axes=[1, 2, 3], keepdims=0,
                         name="level"),
        helper.make_node("Unsqueeze", ["level", "axis_one"], ["column"], name="column"),
        helper.make_node("Mul", ["column", "zero"], ["nothing"], name="scaled_to_zero"),
        helper.make_node("Add", ["nothing", "answer"], ["fc1"], name="answer"),
    ]
    graph = helper.make_graph(
        nodes, "landmark_3d_68_shaped_test_model",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT,
                                       [1, 3, LANDMARK_INPUT, LANDMARK_INPUT])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, LANDMARK_ROWS * 3])],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_one"),
         numpy_helper.from_array(np.zeros((1, 1), dtype=np.float32), "zero"),
         numpy_helper.from_array(rows.reshape(1, -1), "answer")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                             ir_version=IR_VERSION, producer_name="insightface_test_pack")


def build_pack(folder: Path, recognizer_seed: int = 1234, landmarks=None) -> Path:
    """Write det_tiny.onnx and rec_tiny.onnx into `folder` (created); returns the folder.

    A different `recognizer_seed` gives a different recogniser (other weights, same names).
    With `landmarks` (68 x 2 pixels of insightface's 192x192 landmark crop) the pack also holds
    lmk_tiny.onnx, a landmark_3d_68 model (as buffalo_l's 1k3d68.onnx) that always answers them."""
    import onnx

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    models = [("det_tiny.onnx", _detector_model()),
              ("rec_tiny.onnx", _recognizer_model(recognizer_seed))]
    if landmarks is not None:
        models.append(("lmk_tiny.onnx", _landmark_model(landmarks)))
    for name, model in models:
        onnx.checker.check_model(model)
        (folder / name).write_bytes(model.SerializeToString())
    return folder


def face_patch(seed: int, size: int = FACE_SIZE) -> np.ndarray:
    """An 'identity': random 8x8-pixel colour blocks (values 64..255), `size` pixels square."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(64, 256, size=(FACE_SIZE // 8, FACE_SIZE // 8, 3), dtype=np.uint8)
    patch = np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))
    if size != FACE_SIZE:
        import cv2

        patch = cv2.resize(patch, (size, size), interpolation=cv2.INTER_LINEAR)
    return patch


def place_faces(canvas: tuple[int, int],
                faces: list[tuple[int, tuple[int, int], int]]) -> np.ndarray:
    """A black (height, width) BGR canvas with `face_patch(seed, size)` centred at each (x, y)."""
    height, width = canvas
    image = np.zeros((height, width, 3), dtype=np.uint8)
    for seed, (cx, cy), size in faces:
        x0, y0 = cx - size // 2, cy - size // 2
        image[y0:y0 + size, x0:x0 + size] = face_patch(seed, size)
    return image
