"""Engine components with known container-escape bugs, read from the engine's own
``docker version`` answer. Pure: the answer in, warnings out (doctor prints them, the
server logs them at start). A warning never stops anything: a distribution may have
backported the fix into an older version number, which only its changelog says.
"""

import re
from typing import Any

_RUNC_CVES = "CVE-2025-31133, CVE-2025-52565 and CVE-2025-52881"
_DESKTOP_CVE = "CVE-2025-9074"


def _version(text: str) -> tuple[int, int, int, str] | None:
    """(major, minor, patch, pre-release) of '1.2.3', 'v1.2.3-rc.2', '1.1.5+ds1'."""
    match = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:-([0-9A-Za-z.]+))?", text.strip())
    if match is None:
        return None
    major, minor, patch, pre = match.groups()
    return int(major), int(minor), int(patch or 0), pre or ""


def _runc_vulnerable(version: tuple[int, int, int, str]) -> bool:
    major, minor, patch, pre = version
    if (major, minor) < (1, 2) or ((major, minor) == (1, 2) and patch < 8):
        return True
    if (major, minor) == (1, 3):
        return patch < 3
    if (major, minor, patch) == (1, 4, 0) and pre.startswith("rc."):
        number = pre.removeprefix("rc.")
        return number.isdigit() and int(number) < 3
    return False


def _containerd_vulnerable(version: tuple[int, int, int, str]) -> bool:
    # CVE-2024-40635: fixed in 1.6.38, 1.7.27 and 2.0.4; 2.1 and later have it.
    major, minor, patch, _ = version
    fixed = {(1, 6): 38, (1, 7): 27, (2, 0): 4}
    if (major, minor) in fixed:
        return patch < fixed[(major, minor)]
    return (major, minor) < (1, 6)


def _component_warning(name: str, text: str) -> str | None:
    version = _version(text)
    if version is None:
        return None
    if name == "runc" and _runc_vulnerable(version):
        return (
            f"runc {text} is older than the fixes for {_RUNC_CVES} (container escapes "
            f"through mount races on /dev/null and /proc; fixed in runc 1.2.8, 1.3.3 "
            f"and 1.4.0-rc.3): update the engine's runc, unless your distribution "
            f"backported the fixes into this build (its changelog says)."
        )
    if name == "containerd" and _containerd_vulnerable(version):
        return (
            f"containerd {text} is older than the fix for CVE-2024-40635 (a container "
            f"whose user is a UID:GID above 2^31 runs as root; omcp_py sets its own "
            f"users, so an image's user cannot trigger it here; fixed in containerd 1.6.38, "
            f"1.7.27 and 2.0.4): update the engine's containerd, unless your distribution "
            f"backported the fix (its changelog says)."
        )
    return None


def warnings(answer: Any) -> list[str]:
    """What the components of this engine are known to let a container escape by,
    each with its fix. ``answer`` is the engine's ``docker version`` (``/version``);
    any field may be missing."""
    found: list[str] = []
    if not isinstance(answer, dict):
        return found
    components = answer.get("Components")
    for component in components if isinstance(components, list) else []:
        if not isinstance(component, dict):
            continue
        name = str(component.get("Name", "")).lower()
        warning = _component_warning(name, str(component.get("Version") or ""))
        if warning:
            found.append(warning)
    platform = answer.get("Platform")
    name = str(platform.get("Name") or "") if isinstance(platform, dict) else ""
    match = re.search(r"Docker Desktop (\d+\.\d+(?:\.\d+)?)", name)
    if match:
        version = _version(match.group(1))
        if version is not None and version[:3] < (4, 44, 3):
            found.append(
                f"{name.split(' (')[0]} is older than the fix for {_DESKTOP_CVE} (a container "
                f"can reach the engine's API at 192.168.65.7:2375 without the socket mounted; "
                f"fixed in Docker Desktop 4.44.3): update Docker Desktop."
            )
    return found
