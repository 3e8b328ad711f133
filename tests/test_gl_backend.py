from vla_gym import gl_backend


def test_explicit_backend_wins(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    assert gl_backend.choose_backend() == "osmesa"


def _headless(monkeypatch):
    for name in ("MUJOCO_GL", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)


def test_headless_prefers_egl_then_osmesa(monkeypatch):
    _headless(monkeypatch)
    monkeypatch.setattr(gl_backend, "_has_library", lambda *names: True)
    assert gl_backend.choose_backend() == "egl"
    monkeypatch.setattr(gl_backend, "_has_library", lambda *names: "OSMesa" in names)
    assert gl_backend.choose_backend() == "osmesa"


def test_no_library_gives_install_hint(monkeypatch):
    _headless(monkeypatch)
    monkeypatch.setattr(gl_backend, "_has_library", lambda *names: False)
    assert gl_backend.choose_backend() is None
    assert "libosmesa6" in gl_backend.describe_problem()


def test_display_leaves_default(monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.setenv("DISPLAY", ":0")
    assert gl_backend.choose_backend() is None
