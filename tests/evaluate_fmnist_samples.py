#!/usr/bin/python3
"""An independent evaluator of generated Fashion-MNIST samples (owns nothing else).

It judges the images that `ldm sample` writes (an ldm data set file: /images uint8
(N, H, W, 1), /labels) with its own CNN classifier, trained here on Debian's
Fashion-MNIST idx files (/usr/share/datasets/fashion-mnist) and not through
`ldm prepare`, so that a bug in our converter or loader cannot hide itself. It reports

  - accuracy: the fraction of samples the classifier puts in their /labels class
    (overall and per class): does the model follow its class conditioning?
  - variety, per class and overall: the mean pairwise distance between the
    classifier features of the samples of a class, divided by the same mean for the
    real test images of that class (1 = as varied as the data, ~0 = one image
    repeated), and the fraction of pairs within a class that are near-duplicates in
    pixel space (mean absolute difference < 2/255);
  - fd: the Frechet distance between the samples' and the real test split's
    classifier features (penultimate layer), the FID formula with this classifier in
    place of Inception (so the numbers are comparable only with each other);

as lines for people and, last, one line `evaluation: {json}`. --min-accuracy and
--min-variety turn it into a check: exit 1 with a one-line reason when one is not met.

--real-test / --real-train take the real split instead of a file (padded to 32x32 with
black, centred, exactly like `ldm prepare fashion-mnist --pad 32`), optionally with
shuffled labels or with every class collapsed to one image repeated, and --out writes
that as an ldm data set file: known inputs on which the evaluator must pass or fail.

Exit status: 0 done (and thresholds met), 1 a threshold not met, 2 bad usage or input,
77 when torch cannot be imported (so that ctest skips rather than fails).
Run it with Debian's /usr/bin/python3 (python3-torch, python3-numpy, python3-h5py).
"""

import argparse
import gzip
import json
import os
import sys
import time

import numpy as np

PROGRAM = "evaluate_fmnist_samples"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SIDE = 28
# The cache records this, so that a classifier of another architecture is not loaded.
CLASSIFIER_VERSION = 1
DEFAULT_TRAIN_IMAGES = 60000
DEFAULT_EPOCHS = 3
# Pairwise statistics are quadratic in the class size: above this, a fixed subsample.
MAX_PAIRWISE = 1000
NEAR_DUPLICATE = 2.0  # mean absolute pixel difference, in 0..255


def fail(message, status=2):
    print(f"{PROGRAM}: error: {message}", file=sys.stderr)
    sys.exit(status)


try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as error:
    fail(f"cannot import torch ({error}); run with Debian's /usr/bin/python3 "
         "and python3-torch", 77)


# ---- Fashion-MNIST from the idx files ----

def read_idx(path, magic):
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        fail(f"{path}: cannot read: {error}")
    header = np.frombuffer(data, ">u4", count=1)[0]
    if header != magic:
        fail(f"{path}: not an idx file (magic {header:#x}, expected {magic:#x})")
    dims = 1 if magic == 2049 else 3
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=dims, offset=4))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape).copy()  # writable


def load_split(directory, split):
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), 2051)
    labels = read_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), 2049)
    return images, labels.astype(np.int64)


def pad_images(images, side):
    """Black border, centred, top = left = (side - 28) / 2: data/fashion_mnist.c."""
    if side == SIDE:
        return images.copy()
    top = (side - SIDE) // 2
    padded = np.zeros((images.shape[0], side, side), np.uint8)
    padded[:, top:top + SIDE, top:top + SIDE] = images
    return padded


def crop_images(images):
    """(N, H, W) -> the centre 28x28 (undoing pad_images) and the border's mean value."""
    side = images.shape[1]
    if side == SIDE:
        return images, None
    top = (side - SIDE) // 2
    inner = images[:, top:top + SIDE, top:top + SIDE]
    border_sum = images.sum(dtype=np.float64) - inner.sum(dtype=np.float64)
    border_count = images.size - inner.size
    return inner, border_sum / border_count


# ---- The classifier ----

def make_classifier():
    # Two strided 4x4 convolutions (16 and 32 channels) and a 128-wide hidden layer:
    # about 90.5% test accuracy after 3 epochs, and cheap enough (no pooling, no batch
    # norm, narrow convolutions, which are most of the cost on a CPU) to train in a
    # minute or two on two cores. The 128 features after its ReLU are what variety and
    # fd measure.
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 128), nn.ReLU(),
        nn.Linear(128, 10))


def to_input(images):
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28), normalised with the data's mean and std."""
    x = torch.from_numpy(np.array(images)).float().div_(255.0)
    return x.sub_(0.2860).div_(0.3530).unsqueeze(1)


def run_classifier(model, images, batch=1000):
    """Logits (N, 10) and penultimate features (N, 128) of uint8 28x28 images."""
    model.eval()
    body, head = model[:-1], model[-1]
    logits, features = [], []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch):
            f = body(to_input(images[start:start + batch]))
            features.append(f)
            logits.append(head(f))
    return torch.cat(logits).numpy(), torch.cat(features).double().numpy()


def train_classifier(directory, train_images, epochs, seed):
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    images, labels = load_split(directory, "train")
    order = np.random.RandomState(seed).permutation(images.shape[0])[:train_images]
    images, labels = images[order], labels[order]
    model = make_classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=6e-3)
    batch = 128
    steps = epochs * ((len(images) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=6e-3, total_steps=steps)
    x_all, y_all = to_input(images), torch.from_numpy(labels)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        shuffle = torch.from_numpy(np.random.RandomState(seed + 1 + epoch).permutation(len(images)))
        total = 0.0
        for first in range(0, len(images), batch):
            index = shuffle[first:first + batch]
            loss = F.cross_entropy(model(x_all[index]), y_all[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
        print(f"classifier epoch {epoch + 1}/{epochs}: loss {total / len(images):.4f} "
              f"({time.time() - start:.0f} s)", flush=True)
    return model, time.time() - start


def get_classifier(args):
    """Load the cached classifier, or train it and write the cache (PATH.tmp, renamed)."""
    wanted = {"train_images": args.train_images or DEFAULT_TRAIN_IMAGES,
              "epochs": args.epochs or DEFAULT_EPOCHS, "seed": args.seed}
    model = make_classifier()
    if os.path.exists(args.classifier):
        try:
            saved = torch.load(args.classifier, map_location="cpu")
            model.load_state_dict(saved["state_dict"])
        except Exception as error:  # a torn or foreign file: say so rather than guess
            fail(f"{args.classifier}: cannot load the classifier ({error}); remove it to retrain")
        if saved.get("version") != CLASSIFIER_VERSION:
            fail(f"{args.classifier}: a classifier of another version; remove it to retrain")
        # Options given on the command line must match what the cache was trained with.
        for key, explicit in (("train_images", args.train_images), ("epochs", args.epochs)):
            if explicit is not None and saved[key] != explicit:
                fail(f"{args.classifier}: trained with {key} {saved[key]}, not {explicit}; "
                     "remove it or choose another --classifier")
        print(f"classifier: {args.classifier} ({saved['train_images']} training images, "
              f"{saved['epochs']} epochs, test accuracy {saved['test_accuracy']:.4f})")
        return model, saved
    print(f"classifier: training on {wanted['train_images']} images, {wanted['epochs']} epochs "
          f"(cache {args.classifier})", flush=True)
    model, seconds = train_classifier(args.fmnist_dir, wanted["train_images"], wanted["epochs"],
                                      args.seed)
    test_images, test_labels = load_split(args.fmnist_dir, "test")
    logits, _ = run_classifier(model, test_images)
    accuracy = float((logits.argmax(1) == test_labels).mean())
    print(f"classifier: test accuracy {accuracy:.4f}, trained in {seconds:.0f} s")
    saved = dict(wanted, version=CLASSIFIER_VERSION, state_dict=model.state_dict(),
                 test_accuracy=accuracy, train_seconds=seconds)
    directory = os.path.dirname(os.path.abspath(args.classifier))
    os.makedirs(directory, exist_ok=True)
    torch.save(saved, args.classifier + ".tmp")
    os.replace(args.classifier + ".tmp", args.classifier)
    return model, saved


# ---- Reading and writing ldm data set files ----

def read_samples(path):
    import h5py
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        fail(f"{path}: cannot read the sample file: {error}")
    with f:
        if "images" not in f:
            fail(f"{path}: no /images (expected an ldm data set of images, data/FORMAT.md)")
        if "labels" not in f:
            fail(f"{path}: no /labels (the evaluator needs the class of each sample)")
        images, labels = f["images"][...], f["labels"][...]
    if images.dtype != np.uint8 or images.ndim != 4:
        fail(f"{path}: /images is {images.dtype} {images.shape}, expected uint8 (N, H, W, C)")
    n, h, w, c = images.shape
    if c != 1:
        fail(f"{path}: /images has {c} channels, expected 1 (Fashion-MNIST is grey)")
    if h != w or h < SIDE:
        fail(f"{path}: /images are {h}x{w}, expected 28x28 or padded square (32x32)")
    if labels.shape != (n,):
        fail(f"{path}: /labels has shape {labels.shape}, expected ({n},)")
    labels = labels.astype(np.int64)
    if n == 0 or labels.min() < 0 or labels.max() >= 10:
        fail(f"{path}: expected at least one sample and labels in [0, 9]")
    return images[..., 0], labels


def write_samples(path, images, labels):
    """An ldm data set file as `ldm prepare` writes it: chunks of about 1 MiB along N."""
    import h5py
    n, side = images.shape[0], images.shape[1]
    chunk = max(1, min(n, (1 << 20) // (side * side)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with h5py.File(path + ".tmp", "w") as f:
        f.create_dataset("images", data=images[..., None], chunks=(chunk, side, side, 1))
        f.create_dataset("labels", data=labels.astype(np.int32), chunks=(min(n, 1 << 18),))
        f.attrs["format"] = "ldm-dataset"
        f.attrs["format_version"] = np.int64(1)
        f.attrs["num_classes"] = np.int64(10)
        f.attrs["class_names"] = CLASS_NAMES
    os.replace(path + ".tmp", path)


def real_split(args):
    """The real split as a sample set (padded like ldm), with the requested damage."""
    images, labels = load_split(args.fmnist_dir, args.real)
    if args.n:
        images, labels = images[:args.n], labels[:args.n]
    if args.shuffle_labels:
        labels = labels[np.random.RandomState(args.seed).permutation(len(labels))]
    if args.repeat_one:
        # Mode collapse: each class is its first image, repeated; the labels stay true.
        for k in range(10):
            members = np.flatnonzero(labels == k)
            if len(members):
                images[members] = images[members[0]]
    return pad_images(images, args.pad), labels


# ---- The measures ----

def frechet_distance(f1, f2):
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    tr((S1 S2)^(1/2)) = tr((A S2 A)^(1/2)) with A = S1^(1/2): A S2 A is symmetric
    positive semi-definite, so both roots come from numpy's eigh (no scipy needed),
    negative round-off eigenvalues clipped to 0.
    """
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root1 @ s2 @ root1
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    # Clipped at 0: identical sets give a round-off negative.
    return max(0.0, float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_root))


def subsample(members, seed):
    if len(members) <= MAX_PAIRWISE:
        return members
    return np.sort(np.random.RandomState(seed).choice(members, MAX_PAIRWISE, replace=False))


def mean_pairwise(x, p):
    """Mean distance over the distinct pairs of rows of x, and the distance matrix."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32 if p == 1 else np.float64))
    d = torch.cdist(t, t, p=p).numpy()
    n = len(x)
    return d.sum() / (n * (n - 1)), d


def evaluate(model, images, labels, real_features, real_labels, seed):
    inner, border = crop_images(images)
    logits, features = run_classifier(model, inner)
    predicted = logits.argmax(1)
    flat = inner.reshape(len(inner), -1)
    classes = []
    for k in range(10):
        members = np.flatnonzero(labels == k)
        entry = {"class": k, "name": CLASS_NAMES[k], "n": int(len(members)),
                 "accuracy": None, "variety": None, "near_duplicates": None}
        if len(members):
            entry["accuracy"] = float((predicted[members] == k).mean())
        if len(members) >= 2:
            chosen = subsample(members, seed + k)
            spread, _ = mean_pairwise(features[chosen], 2)
            real = subsample(np.flatnonzero(real_labels == k), seed + k)
            real_spread, _ = mean_pairwise(real_features[real], 2)
            entry["variety"] = float(spread / real_spread)
            _, pixel = mean_pairwise(flat[chosen], 1)
            pairs = np.triu(pixel / flat.shape[1] < NEAR_DUPLICATE, 1)
            entry["near_duplicates"] = float(pairs.sum() / (len(chosen) * (len(chosen) - 1) / 2))
            entry["pairs"] = len(chosen) * (len(chosen) - 1) // 2
        classes.append(entry)
    varied = [c for c in classes if c["variety"] is not None]
    total_pairs = sum(c["pairs"] for c in varied)
    result = {
        "n": int(len(labels)),
        "image_side": int(images.shape[1]),
        "accuracy": float((predicted == labels).mean()),
        # Mean over the classes with at least 2 samples; the worst class is beside it.
        "variety": float(np.mean([c["variety"] for c in varied])) if varied else None,
        "min_class_variety": float(min(c["variety"] for c in varied)) if varied else None,
        "near_duplicates": (float(sum(c["near_duplicates"] * c["pairs"] for c in varied) / total_pairs)
                            if varied else None),
        "fd": frechet_distance(features, real_features) if len(labels) >= 2 else None,
        "predicted_counts": np.bincount(predicted, minlength=10).tolist(),
        "border_mean": border,
        "classes": [{k: v for k, v in c.items() if k != "pairs"} for c in classes],
    }
    return result


def show(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def report(result, source):
    print(f"samples: {source}: {result['n']} images {result['image_side']}x{result['image_side']}"
          + (f" (border mean {result['border_mean']:.2f} of 255)" if result["border_mean"] is not None else ""))
    print(f"{'class':<14}{'n':>7}{'accuracy':>10}{'variety':>9}{'near-dup':>10}")
    for c in result["classes"]:
        print(f"{c['class']} {c['name']:<12}{c['n']:>7}{show(c['accuracy']):>10}"
              f"{show(c['variety']):>9}{show(c['near_duplicates'], 4):>10}")
    print(f"accuracy {result['accuracy']:.4f}, variety {show(result['variety'])} "
          f"(worst class {show(result['min_class_variety'])}), near-duplicate pairs "
          f"{show(result['near_duplicates'], 4)}, fd {show(result['fd'], 2)}")
    print("predicted classes: " + " ".join(str(n) for n in result["predicted_counts"]))
    print("evaluation: " + json.dumps(result, sort_keys=True))


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    parser.add_argument("samples", nargs="?", help="an ldm data set file (/images, /labels)")
    parser.add_argument("--classifier", default=os.path.join(root, "build", "fmnist-classifier.pt"),
                        help="the classifier's cache: loaded if it exists, else trained and written")
    parser.add_argument("--fmnist-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--train-images", type=int, help=f"default {DEFAULT_TRAIN_IMAGES}")
    parser.add_argument("--epochs", type=int, help=f"default {DEFAULT_EPOCHS}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-only", action="store_true", help="make the classifier's cache and stop")
    parser.add_argument("--min-accuracy", type=float)
    parser.add_argument("--min-variety", type=float)
    real = parser.add_argument_group("real data in place of samples")
    real.add_argument("--real-test", dest="real", action="store_const", const="test")
    real.add_argument("--real-train", dest="real", action="store_const", const="train")
    real.add_argument("--n", type=int, help="only the first N images")
    real.add_argument("--shuffle-labels", action="store_true")
    real.add_argument("--repeat-one", action="store_true",
                      help="each class becomes its first image repeated")
    real.add_argument("--pad", type=int, default=32, help="side to pad to (28: none)")
    real.add_argument("--out", help="write the set as an ldm data set file and stop")
    args = parser.parse_args()
    if args.train_images is not None and not 1000 <= args.train_images <= 60000:
        parser.error("--train-images: expected 1000 to 60000")
    if args.epochs is not None and not 1 <= args.epochs <= 100:
        parser.error("--epochs: expected 1 to 100")
    if not args.real and (args.out or args.shuffle_labels or args.repeat_one or args.n):
        parser.error("--out, --n, --shuffle-labels and --repeat-one go with --real-test/--real-train")
    if args.pad < SIDE or args.pad > 1024 or (args.pad - SIDE) % 2:
        parser.error("--pad: expected an even side from 28")
    if args.n is not None and args.n < 1:
        parser.error("--n: expected at least 1")
    if args.real and args.samples:
        parser.error("give a sample file or --real-test/--real-train, not both")
    if not args.real and not args.samples and not args.train_only:
        parser.error("give a sample file (or --real-test, --train-only)")

    torch.set_num_threads(2)
    if args.real and args.out:
        images, labels = real_split(args)
        write_samples(args.out, images, labels)
        print(f"wrote {args.out}: {len(labels)} images {args.pad}x{args.pad}")
        return 0
    # The samples first: a bad file is refused before minutes of classifier training.
    if args.real:
        images, labels = real_split(args)
        source = f"real {args.real} split"
    elif args.samples:
        images, labels = read_samples(args.samples)
        source = args.samples
    model, _ = get_classifier(args)
    if args.train_only:
        return 0
    real_images, real_labels = load_split(args.fmnist_dir, "test")
    _, real_features = run_classifier(model, real_images)
    result = evaluate(model, images, labels, real_features, real_labels, args.seed)
    report(result, source)
    if args.min_accuracy is not None and result["accuracy"] < args.min_accuracy:
        fail(f"accuracy {result['accuracy']:.4f} is below --min-accuracy {args.min_accuracy}", 1)
    if args.min_variety is not None and (result["variety"] is None or result["variety"] < args.min_variety):
        fail(f"variety {show(result['variety'], 4)} is below --min-variety {args.min_variety}", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
