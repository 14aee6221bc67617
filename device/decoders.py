"""QR decoders behind one interface: image in, decoded texts out."""

from pathlib import Path


class PyzbarDecoder:
    name = "pyzbar"

    def __init__(self):
        from pyzbar import pyzbar  # needs the libzbar0 system library
        self._decode = pyzbar.decode
        self._qr = [pyzbar.ZBarSymbol.QRCODE]

    def decode(self, image) -> list[str]:
        """image: a PIL image or a greyscale numpy array."""
        if hasattr(image, "shape"):
            height, width = image.shape[:2]
            image = (image.tobytes(), width, height)
        texts = []
        for symbol in self._decode(image, symbols=self._qr):
            try:
                texts.append(symbol.data.decode("utf-8"))
            except UnicodeDecodeError:
                texts.append(symbol.data.decode("latin-1"))
        return texts


def decode_image_file(path: str | Path, decoder=None) -> list[str]:
    from PIL import Image
    with Image.open(path) as img:
        return (decoder or PyzbarDecoder()).decode(img.convert("L"))
