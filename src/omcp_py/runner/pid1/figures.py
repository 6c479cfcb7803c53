"""Figures: every matplotlib figure a run shows or leaves open comes back as an
image, drawn in the code's process and checked again by PID 1 (checked_image)."""

import binascii
import io
import struct
import sys
import traceback

# Nothing here imports matplotlib: code that does not use it pays nothing.
SHOWN = []  # figures plt.show() took during this run, in order
MAX_SIDE = 2048  # pixels; clients scale larger images down anyway, and they cost tokens
MIN_SIDE = 256  # below this a chart is unreadable: leave it out rather than shrink it
MAX_FIGURES = 20  # drawn per run at most: each takes time from the run's own timeout


def patch_pyplot(pyplot):
    """plt.show() collects the open figures for the result and closes them, as in a
    notebook: later plotting starts a new figure instead of drawing over the shown one."""
    if getattr(pyplot.show, "omcp", False):
        return

    def show(*args, **kwargs):
        SHOWN.extend(pyplot.figure(num) for num in pyplot.get_fignums())
        pyplot.close("all")

    show.omcp = True
    show.__doc__ = "Show the open figures: they come back with the result as images."
    pyplot.show = show


class PyplotHook:
    """An import hook that finds nothing itself: when matplotlib.pyplot is imported it
    wraps the loader, so show() is patched before the code can use it."""

    def find_spec(self, name, path=None, target=None):
        if name != "matplotlib.pyplot":
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(name, path)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return None
        run = loader.exec_module

        def exec_module(module):
            run(module)
            patch_pyplot(module)

        loader.exec_module = exec_module
        return spec


def take_figures():
    """The figures of this run: shown ones first, then those still open; all closed."""
    figures, SHOWN[:] = list(SHOWN), []
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        try:
            figures.extend(pyplot.figure(num) for num in pyplot.get_fignums())
            pyplot.close("all")
        except Exception:
            traceback.print_exc()
    return figures


# Why the code's process left figures out, as it may say it (anything else it says is
# ignored: it could say anything).
FIGURE_REASONS = (
    "IMAGE_BUDGET is 0",
    "more than %d figures in one run" % MAX_FIGURES,
    "could not be drawn",
    "over IMAGE_BUDGET",
)
IMAGE_SIGNATURES = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff"}


def checked_image(image, room):
    """(why it is refused, None) or (None, the image with its real size), for an image
    the code's process reported: it could have reported anything."""
    if not isinstance(image, dict):
        return "not a PNG or JPEG image", None
    mime, data = image.get("mime"), image.get("data")
    if mime not in IMAGE_SIGNATURES or not isinstance(data, str):
        return "not a PNG or JPEG image", None
    if len(data) > room:
        return "over IMAGE_BUDGET", None
    try:
        raw = data.encode("ascii")
        if len(raw) % 4 or raw.translate(None, BASE64_ALPHABET + b"="):
            raise ValueError
        decoded = binascii.a2b_base64(raw)
    except (ValueError, binascii.Error, UnicodeError):
        return "not base64", None
    if binascii.b2a_base64(decoded, newline=False) != raw:
        return "not base64", None
    if not decoded.startswith(IMAGE_SIGNATURES[mime]):
        return "not a %s image" % mime.split("/")[1].upper(), None
    width, height = image_size(decoded)
    return None, {"mime": mime, "width": width, "height": height, "data": data}


BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def image_size(data):
    """(width, height) of a PNG or JPEG, read from its header; (0, 0) if unknown."""
    if data[:8] == IMAGE_SIGNATURES["image/png"] and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    index = 2
    while index + 9 < len(data) and data[index] == 0xFF:
        marker = data[index + 1]
        length = struct.unpack(">H", data[index + 2 : index + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            height, width = struct.unpack(">HH", data[index + 5 : index + 9])
            return int(width), int(height)
        if length < 2:  # a segment cannot be shorter than its length field
            break
        index += 2 + length
    return 0, 0


def render(figure, dpi, fmt):
    buffer = io.BytesIO()
    options = {"format": fmt, "dpi": dpi, "bbox_inches": "tight"}
    if fmt == "jpeg":
        options["pil_kwargs"] = {"quality": 75}
    figure.savefig(buffer, **options)
    data = buffer.getvalue()
    width, height = image_size(data)
    return {"data": data, "mime": "image/" + fmt, "width": width, "height": height, "dpi": dpi}


def largest_dpi(figure):
    width, height = figure.get_size_inches()
    return min(float(figure.dpi), MAX_SIDE / max(width, height, 0.01))


def shrink(figure, image, target):
    """A rendering of ``figure`` of at most ``target`` bytes, or None.

    Smaller PNGs first (charts stay crisp), then JPEG (dense images, photos), never
    below MIN_SIDE pixels.
    """
    width, height = figure.get_size_inches()
    lowest = MIN_SIDE / max(width, height, 0.01)
    for fmt in ("png", "jpeg"):
        if image["mime"] != "image/" + fmt:
            image = render(figure, largest_dpi(figure), fmt)
        for _ in range(5):
            size = len(image["data"])
            if size <= target:
                return image
            # The encoded size follows the pixel count, roughly: aim a little below.
            dpi = image["dpi"] * min(0.9, (target / size) ** 0.5 * 0.95)
            if dpi < lowest:
                break
            image = render(figure, dpi, fmt)
    return None


def fair_shares(sizes, budget):
    """Split ``budget`` so small images keep their size and big ones share the rest."""
    shares = [0] * len(sizes)
    left = budget
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    for position, index in enumerate(order):
        share = min(sizes[index], left // (len(order) - position))
        shares[index] = share
        left -= share
    return shares


def encode_figures(figures, budget):
    """Render figures as images of ``budget`` raw bytes at most, all together.

    Returns:
        (images as JSON-ready dicts, how many figures were left out, why: a list of
        FIGURE_REASONS).
    """
    why = []
    if budget <= 0 and figures:
        why.append("IMAGE_BUDGET is 0")
    elif len(figures) > MAX_FIGURES:
        why.append("more than %d figures in one run" % MAX_FIGURES)
    pairs = []
    drawn = figures[:MAX_FIGURES] if budget > 0 else []
    for number, figure in enumerate(drawn, 1):
        try:
            pairs.append((figure, render(figure, largest_dpi(figure), "png")))
        except Exception as exc:
            print("[omcp_py] figure %d could not be drawn: %r" % (number, exc), file=sys.stderr)
            if "could not be drawn" not in why:
                why.append("could not be drawn")
    keep = len(pairs)
    while keep:
        sizes = [len(image["data"]) for _, image in pairs[:keep]]
        if sum(sizes) <= budget:
            break
        for index, share in enumerate(fair_shares(sizes, budget)):
            figure, image = pairs[index]
            if len(image["data"]) > share:
                smaller = shrink(figure, image, share)
                if smaller is None:
                    # Not even the smallest readable rendering fits: drop the last
                    # figure, which frees room for those before it.
                    keep -= 1
                    break
                pairs[index] = (figure, smaller)
    out = []
    for _, image in pairs[:keep]:
        data = image.pop("data")
        del image["dpi"]
        image["data"] = binascii.b2a_base64(data, newline=False).decode("ascii")
        out.append(image)
    if keep < len(pairs):
        why.append("over IMAGE_BUDGET")
    return out, len(figures) - len(out), why
