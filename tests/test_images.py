"""The image forge on the real engine: idempotent builds, labels, change detection, rootfs cache."""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import tomllib
from pathlib import Path

import docker
import pytest

from harness import images, labels
from harness.engine import state_dir
from harness.errors import ImageError, InputError
from harness.image_catalog import CATALOG, content_hash, load_catalog

pytestmark = [pytest.mark.engine, pytest.mark.images]

RECIPES = CATALOG.parent


@pytest.fixture(scope="module")
def client(engine_client):
    # Builds and imports stream for minutes; the session client times out after a few seconds.
    client = docker.from_env(timeout=600)
    yield client
    client.close()


@pytest.fixture(scope="module")
def second_report(client) -> images.ForgeReport:
    images.ensure_images(client)
    return images.ensure_images(client)


@pytest.fixture
def temporary_tag(client):
    tag = f"dind-dood-harness-test/forge-{labels.session_id()}-{secrets.token_hex(3)}:latest"
    yield tag
    try:
        client.images.remove(tag, force=True)
    except docker.errors.ImageNotFound:
        pass


def _toml_value(value: object) -> str:
    # JSON strings and lists of strings are valid TOML values.
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {json.dumps(item)}" for key, item in value.items()) + " }"
    return json.dumps(value)


def _write_catalog(directory: Path, name: str, table: dict[str, object]) -> Path:
    lines = [f"[{name}]"] + [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    path = directory / "images.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run_output(client, image: str, command: list[str]) -> str:
    container = client.containers.run(image, command, detach=True, labels=labels.managed_labels("test"))
    try:
        status = container.wait(timeout=60)
        output = container.logs().decode()
    finally:
        container.remove(force=True)
    assert status["StatusCode"] == 0, output
    return output


def test_second_ensure_builds_nothing(second_report):
    assert second_report.built == []
    assert not any(load_catalog()[result.recipe].on_demand for result in second_report.results)
    for result in second_report.results:
        assert result.action in ("up to date", "skipped"), result


def test_images_carry_forge_labels(client, second_report):
    catalog = load_catalog()
    hashes = images.recipe_hashes(client, catalog)
    skipped = {result.recipe for result in second_report.results if result.action == "skipped"}

    for recipe in catalog.values():
        if recipe.name in skipped or recipe.on_demand:
            continue
        for tag in recipe.tags:
            image_labels = client.images.get(tag).labels
            assert image_labels[labels.STAND_IN] == "true", tag
            assert image_labels[labels.RECIPE_HASH] == hashes[recipe.name], tag
            assert image_labels[labels.UPSTREAM] == ",".join(recipe.tags), tag


def test_list_images_shows_current_stand_ins(client, second_report):
    skipped = {result.recipe for result in second_report.results if result.action == "skipped"}
    rows = [row for row in images.list_images(client) if row.recipe not in skipped and not row.on_demand]

    assert {row.tag for row in rows} >= {"busybox:latest", "docker:dind", "docker:1.12.6", "node:18"}
    for row in rows:
        assert row.present, row.tag
        assert row.stand_in, row.tag
        assert row.recipe_changed is False, row.tag


def test_changed_recipe_is_rebuilt(client, tmp_path, temporary_tag, second_report):
    shutil.copytree(RECIPES / "alpine", tmp_path / "alpine")
    catalog_path = _write_catalog(tmp_path, "alpine-copy", {
        "dir": "alpine", "tags": [temporary_tag], "purpose": "copy of the alpine recipe",
        "from": ["busybox:latest"]})

    first = images.ensure_images(client, catalog_path=catalog_path)
    [row] = images.list_images(client, catalog_path)
    first_image = client.images.get(temporary_tag)
    first_hash = first_image.labels[labels.RECIPE_HASH]
    assert first.built == ["alpine-copy"]
    assert row.recipe_changed is False

    (tmp_path / "alpine" / "rootfs" / "etc" / "alpine-release").write_text("3.99.0\n")
    [row] = images.list_images(client, catalog_path)
    assert row.recipe_changed is True

    second = images.ensure_images(client, catalog_path=catalog_path)
    assert second.built == ["alpine-copy"]
    assert client.images.get(temporary_tag).labels[labels.RECIPE_HASH] != first_hash
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(first_image.id)
    assert _run_output(client, temporary_tag, ["cat", "/etc/alpine-release"]) == "3.99.0\n"
    assert images.ensure_images(client, catalog_path=catalog_path).built == []


def test_base_copy_reuses_cached_rootfs(client, tmp_path, temporary_tag, second_report, caplog):
    # Same recipe name, files and args as the real base, so the cache key matches.
    real = tomllib.loads(CATALOG.read_text())["debian"]
    shutil.copytree(RECIPES / "base", tmp_path / "base")
    catalog_path = _write_catalog(tmp_path, "debian", {
        "dir": "base", "tags": [temporary_tag], "purpose": "copy of the base recipe",
        "from": ["debootstrap"], "args": real["args"]})
    archive = state_dir() / "images" / f"debian-rootfs-{content_hash(load_catalog()['debian'])[:16]}.tar"
    assert archive.is_file(), "the real base was built, so its root filesystem archive must be cached"

    with caplog.at_level(logging.INFO, logger="harness.images"):
        report = images.ensure_images(client, catalog_path=catalog_path)

    assert report.built == ["debian"]
    assert f"using cached root filesystem {archive}" in caplog.text
    assert "running debootstrap" not in caplog.text
    assert client.images.get(temporary_tag).labels[labels.STAND_IN] == "true"
    assert _run_output(client, temporary_tag, ["cat", "/etc/debian_version"]).startswith("12.")


def test_pull_failure_is_one_line(client, tmp_path):
    # Port 9 on loopback has no registry, so the pull fails at once without leaving this machine.
    catalog_path = _write_catalog(tmp_path, "unreachable", {
        "dir": "unreachable", "tags": ["127.0.0.1:9/dind-dood-harness-test/none:latest"],
        "purpose": "registry that does not exist", "from": ["scratch"]})

    with pytest.raises(ImageError) as caught:
        images.ensure_images(client, pull=True, catalog_path=catalog_path)

    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("pulling 127.0.0.1:9/dind-dood-harness-test/none:latest failed: ")
    assert "without --pull" in message


def test_unknown_name_raises_input_error(client):
    with pytest.raises(InputError) as caught:
        images.ensure_images(client, names=["no-such-recipe"])

    assert "no-such-recipe: no recipe or tag of that name" in str(caught.value)


@pytest.mark.parametrize("table, problem", [
    ({"dir": "x", "tags": ["x:1"], "purpose": "p", "from": ["no-such-recipe"]}, "unknown recipe 'no-such-recipe'"),
    ({"dir": "x", "tags": [], "purpose": "p", "from": ["scratch"]}, "must be a non-empty list"),
    ({"dir": "x", "tags": ["x:1"], "purpose": "p", "from": ["debootstrap"]}, "missing SUITE"),
    ({"dir": "x", "tags": ["x:1"], "from": ["scratch"]}, "purpose: missing"),
])
def test_catalog_rejects_invalid_recipe(tmp_path, table, problem):
    catalog_path = _write_catalog(tmp_path, "broken", table)

    with pytest.raises(InputError) as caught:
        load_catalog(catalog_path)

    assert problem in str(caught.value)


def test_catalog_rejects_dependency_cycle(tmp_path):
    (tmp_path / "images.toml").write_text(
        '[a]\ndir = "a"\ntags = ["a:1"]\npurpose = "p"\nfrom = ["b"]\n'
        '[b]\ndir = "b"\ntags = ["b:1"]\npurpose = "p"\nfrom = ["a"]\n')

    with pytest.raises(InputError) as caught:
        load_catalog(tmp_path / "images.toml")

    assert "cycle" in str(caught.value)


def test_render_image_table_aligns_columns():
    rows = [
        images.ImageRow("busybox:latest", "busybox", True, True, False, "sha256:1", 2_000_000),
        images.ImageRow("docker:dind", "dind", False, False, None, None, None),
        images.ImageRow("docker:26.1-dind", "dind-26", True, True, False, "sha256:2", 352_500_000, "26.1.5+dfsg1",
                        True),
        images.ImageRow("docker:28.5-dind", "dind-28", False, False, None, None, None, "", True),
    ]

    lines = images.render_image_table(rows).splitlines()

    assert lines[0].split() == ["TAG", "RECIPE", "PRESENT", "STAND-IN", "RECIPE", "CHANGED", "ENGINE", "SIZE"]
    assert lines[1].split() == ["busybox:latest", "busybox", "yes", "yes", "no", "-", "2.0", "MB"]
    assert lines[2].split() == ["docker:dind", "dind", "no", "-", "-", "-", "-"]
    assert lines[3].split() == ["docker:26.1-dind", "dind-26", "yes", "yes", "no", "26.1.5+dfsg1", "352.5", "MB"]
    assert lines[4].split() == ["docker:28.5-dind", "dind-28", "on", "demand", "-", "-", "-", "-"]
    recipe_column = lines[0].index("RECIPE")
    assert lines[1].index(" busybox ") + 1 == recipe_column
    assert lines[2].index(" dind ") + 1 == recipe_column
