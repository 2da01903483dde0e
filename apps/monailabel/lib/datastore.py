"""Only the datastore is served: how the app turns a request's ``image`` into a file, and the local datastore that
keeps every read and write inside the studies folder.

MONAI Label 0.8.5 trusts its clients with paths in three places, which this module closes for the app:

- ``MONAILabelApp.infer`` takes ``image`` as a path on the server whenever ``os.path.exists(image)`` (absolute,
  ``../x`` relative to the server's working folder), and only otherwise as a datastore id;
- ``LocalDatastore.add_image`` (``PUT /datastore/image``) and ``save_label`` (``PUT /datastore/label``, and an infer
  request's ``save_label`` / ``label_tag``) join the client's image id and label tag to the studies folder unchecked:
  ``image=../x`` or ``tag=../../x`` (also URL-encoded: the server decodes ``%2F`` before the app sees it) write outside
  it, and an absolute one writes where it names;
- the datastore resolves ids with ``os.path.realpath``: a link in the studies folder that leads outside it is served
  (``GET /datastore/image``), written through (``PUT``) and even deleted at its target (``DELETE``).

:func:`resolve_image` accepts a datastore id (or a file MONAI Label itself just received: an infer upload, a
session), and :class:`StudiesDatastore` refuses ids and tags that are not plain names and any file whose real path
leaves the studies folder. Refusals are HTTP errors whose text names the id the client gave, never a server path.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import tempfile
from typing import Any

from fastapi import HTTPException
from monailabel.datastore.local import LocalDatastore

__all__ = ["StudiesDatastore", "check_tag", "is_plain_name", "is_upload", "resolve_image"]

logger = logging.getLogger(__name__)

#: the name ``tempfile.NamedTemporaryFile(suffix=...)`` gives MONAI Label's infer uploads (``tmp`` + 8 random
#: characters + the uploaded file's extensions)
_UPLOAD_NAME = re.compile(r"tmp[a-z0-9_]{8}(\.[^/\\]*)?\Z")
_LIST_IDS = "GET /datastore/?output=all lists the ids"


def _refuse(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


def is_plain_name(value: object) -> bool:
    """True for a name that stays in its folder: text without ``/``, ``\\`` or NUL, not ``.``, ``..`` or empty."""
    return (isinstance(value, str) and value not in ("", ".", "..")
            and not any(c in value for c in ("/", "\\", "\0")))


def check_tag(tag: object) -> str:
    """``tag`` when it is a label tag the datastore may write (a plain name without a leading dot), else a 400."""
    if not is_plain_name(tag) or tag.startswith("."):
        raise _refuse(400, "label tag: not a plain name (final, original, or another name without folders); "
                           "nothing was written")
    return tag


def _not_an_id(what: str = "image") -> HTTPException:
    # the value is not echoed: it may be a server path, and whether it exists is none of the client's business
    return _refuse(400, f"{what}: not a datastore image id; ids are plain file names without folders ({_LIST_IDS}); "
                        "this app reads no other file on the server")


def _unknown(image_id: str) -> HTTPException:
    return _refuse(404, f"image id {image_id!r} is not in the datastore ({_LIST_IDS}; PUT /datastore/image adds one)")


def _inside(path: str, root: str) -> bool:
    """True when ``path``'s real path (links followed) is ``root`` or below it (``root`` already real)."""
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def is_upload(path: str) -> bool:
    """True for a file that MONAI Label's infer endpoint has just written from the request's upload (``file=``): a
    regular file of this process's user, directly in the temporary folder, with ``tempfile``'s random name."""
    if not os.path.isabs(path) or os.path.dirname(path) != tempfile.gettempdir():
        return False
    if not _UPLOAD_NAME.match(os.path.basename(path)):
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid()


def resolve_image(request: dict, datastore: Any, session_store: str | None) -> tuple[str, str | None]:
    """``(file to read, datastore image id or None for an upload)`` of an infer request's ``image``.

    Accepted: a datastore image id; the file MONAI Label wrote for this request's upload (``file=``); the image of a
    session (``session_id=``), which lives in MONAI Label's session folder. Anything else is refused.

    Raises:
        HTTPException: 400 for no image or a value that is not an id (a path), 404 for an id the datastore does not
            hold, 403 for an id whose file is a link leading outside the studies folder.
    """
    image = request.get("image")
    if not isinstance(image, str) or not image:
        raise _refuse(400, "no image given: pass a datastore image id (image=ID), or upload the file (file=...)")
    if is_plain_name(image):
        if isinstance(datastore, StudiesDatastore):
            return datastore.image_file(image), image
        return _remote_image(datastore, image), image
    if is_upload(image):
        return image, None
    if session_store and os.path.isabs(image) and _inside(image, os.path.realpath(session_store)):
        return image, None
    raise _not_an_id()


def _remote_image(datastore: Any, image_id: str) -> str:
    """The local copy of a DICOMweb (or other remote) datastore's image ``image_id``."""
    try:
        uri = datastore.get_image_uri(image_id)
    except Exception as err:  # noqa: BLE001 - a remote datastore raises whatever its client raises for a bad id
        logger.warning("image id %r: the datastore could not fetch it: %s", image_id, err)
        uri = ""
    if not uri or not os.path.exists(uri):
        raise _unknown(image_id)
    return uri


class StudiesDatastore(LocalDatastore):
    """MONAI Label's local datastore, confined to the studies folder.

    Reads (``get_image_uri``, ``get_label_uri``, ``datalist`` for training, downloads) leave out any file whose
    real path is outside the studies folder (a link leading out), as if it were not there, and log it; writes
    (``add_image``, ``save_label``, ``remove_*``) refuse ids and tags that are not plain names, files of other types
    than the datastore's extensions, and links, with an HTTP error naming the id.
    """

    @property
    def root(self) -> str:
        """The studies folder's real path."""
        return os.path.realpath(self._datastore_path)

    def _contained(self, path: str, what: str) -> bool:
        if _inside(path, self.root):
            return True
        logger.warning("%s resolves outside the studies folder %s: not served", what, self.root)
        return False

    def _extensions_list(self) -> list[str]:
        return [e.replace("*", "") for e in self._extensions]

    def _check_write(self, name: str, ext: str, folder: str, what: str) -> str:
        """The file ``name + ext`` of ``folder`` after the checks of a write; raises an HTTP error otherwise."""
        if not is_plain_name(name) or name.startswith("."):
            raise _refuse(400, f"{what}: not a plain file name (no folders, no leading dot); nothing was written")
        if ext not in self._extensions_list():
            raise _refuse(400, f"{what} {name!r}: the upload's file name must end in one of "
                               f"{', '.join(self._extensions_list())}; nothing was written")
        if os.path.lexists(folder) and not _inside(folder, self.root):
            raise _refuse(403, f"{what} {name!r}: its folder is a link leading outside the studies folder; nothing "
                               "was written")
        dest = os.path.join(folder, name + ext)
        if os.path.islink(dest):
            raise _refuse(403, f"{what} {name!r}: the datastore's file is a link; the app never writes through a "
                               "link (replace it with the file on the server); nothing was written")
        return dest

    # -- reads ---------------------------------------------------------------------------------------------------
    def image_file(self, image_id: str) -> str:
        """The file of image ``image_id``; raises 404 when it is not in the datastore, 403 when its file leads
        outside the studies folder."""
        if image_id not in self._datastore.objects:
            raise _unknown(image_id)
        uri = super().get_image_uri(image_id)
        if not uri or not self._contained(uri, f"image id {image_id!r}"):
            raise _refuse(403, f"image id {image_id!r} is a link to a file outside the studies folder: this app reads "
                               "only files inside it (copy the file into the studies folder)")
        return uri

    def get_image_uri(self, image_id: str) -> str:
        uri = super().get_image_uri(image_id)
        return uri if uri and self._contained(uri, f"image id {image_id!r}") else ""

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        info = super().get_image_info(image_id)
        if "path" in info and not self._contained(info["path"], f"image id {image_id!r}"):
            info.pop("path")
        return info

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        uri = super().get_label_uri(label_id, label_tag)
        return uri if uri and self._contained(uri, f"label {label_id!r} (tag {label_tag!r})") else ""

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        entries = super().datalist(full_path=True)
        kept = [e for e in entries if all(self._contained(e[k], f"datalist {k} {os.path.basename(e[k])!r}")
                                          for k in ("image", "label"))]
        if not full_path:  # MONAI Label's relative form: paths below the studies folder
            return [{k: os.path.relpath(v, self.root) for k, v in e.items()} for e in kept]
        return kept

    # -- writes --------------------------------------------------------------------------------------------------
    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        from_file, ext = self._to_id(os.path.basename(image_filename))
        image_id = image_id or from_file
        self._check_write(image_id, ext, self._datastore.image_path(), "image id")
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        if not is_plain_name(image_id):
            raise _not_an_id()
        if image_id not in self._datastore.objects:
            raise _unknown(image_id)
        self.image_file(image_id)  # its labels go with it: none for an image that leads outside
        check_tag(label_tag)
        _, ext = self._to_id(os.path.basename(label_filename))
        self._check_write(image_id, ext, self._datastore.label_path(label_tag), "label of image id")
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def remove_image(self, image_id: str) -> None:
        if image_id in self._datastore.objects:
            self.image_file(image_id)  # never delete the target of a link leading outside
        else:
            raise _unknown(image_id)
        super().remove_image(image_id)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        label = self._datastore.label(label_id, label_tag)
        if label is not None:
            path = os.path.join(self._datastore.label_path(label_tag), self._filename(label_id, label.ext))
            if not self._contained(path, f"label {label_id!r} (tag {label_tag!r})"):
                raise _refuse(403, f"label of image id {label_id!r} (tag {label_tag!r}) is a link to a file outside "
                                   "the studies folder: not removed")
        super().remove_label(label_id, label_tag)
