"""TLS in-process: the gRPC front's server credentials (shim/grpc/tls.py) with certificates made by the test, and
the REST front's nginx configuration as scripts/serve renders it (scripts/rest_proxy.py). Real TLS end to end,
through scripts/serve with the real clients: tests/test_security.py."""

from __future__ import annotations

import os

import grpc
import pytest
from fake_torchserve import FakeTorchServe
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fastai_serving_scripts import rest_proxy
from fastai_serving_scripts.security import CertificateWatch, announcement, refusal
from fastai_serving_shim.certificates import TlsFilesError, check_pair
from fastai_serving_shim.grpc.server import GrpcFront
from fastai_serving_shim.service import Service
from fastai_serving_shim.settings import Settings
from fastai_serving_shim.watched import Watched
from harness.certificates import Authority, replace


@pytest.fixture(scope="module")
def authority(tmp_path_factory):
    return Authority(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def server_files(authority, tmp_path):
    """The server's certificate and key where the server reads them (copies, so a test may replace them)."""
    pair = authority.issue("server")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    replace(pair.cert, cert)
    replace(pair.key, key)
    return cert, key


def front(settings: Settings) -> GrpcFront:
    return GrpcFront(settings, Service(settings, FakeTorchServe())).start()


def health_of(channel: grpc.Channel) -> int:
    request = health_pb2.HealthCheckRequest(service="")
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status


def tls_channel(port: int, ca, client=None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        ca.read_bytes(), client.key.read_bytes() if client else None, client.cert.read_bytes() if client else None
    )
    return grpc.secure_channel(f"localhost:{port}", credentials)


def test_the_grpc_front_speaks_tls_with_its_certificate_and_refuses_plaintext(authority, server_files):
    cert, key = server_files
    running = front(Settings(host="127.0.0.1", grpc_port=0, tls_cert_file=str(cert), tls_key_file=str(key)))
    try:
        with tls_channel(running.port, authority.cert) as channel:
            assert health_of(channel) == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as plain, pytest.raises(grpc.RpcError) as refused:
            health_of(plain)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(grace_s=0)


def test_with_a_client_ca_a_client_without_a_certificate_is_refused_at_the_handshake(authority, server_files):
    cert, key = server_files
    settings = Settings(host="127.0.0.1", grpc_port=0, tls_cert_file=str(cert), tls_key_file=str(key),
                        tls_client_ca_file=str(authority.cert))  # fmt: skip
    running = front(settings)
    try:
        with tls_channel(running.port, authority.cert) as channel, pytest.raises(grpc.RpcError) as refused:
            health_of(channel)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        stranger = Authority(cert.parent / "other-ca", "another CA").issue("stranger", client=True)
        with tls_channel(running.port, authority.cert, stranger) as channel, pytest.raises(grpc.RpcError):
            health_of(channel)
        with tls_channel(running.port, authority.cert, authority.issue("pipeline", client=True)) as channel:
            assert health_of(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        running.stop(grace_s=0)


def test_a_certificate_replaced_on_disk_is_served_to_new_connections_while_open_ones_go_on(authority, server_files):
    cert, key = server_files
    running = front(Settings(host="127.0.0.1", grpc_port=0, tls_cert_file=str(cert), tls_key_file=str(key)))
    try:
        running.certificates.watched.check_s = 0  # look at the files at every handshake
        old = tls_channel(running.port, authority.cert)
        assert health_of(old) == health_pb2.HealthCheckResponse.SERVING
        renewed = Authority(cert.parent / "renewed", "renewed CA")
        pair = renewed.issue("server")
        replace(pair.key, key)
        replace(pair.cert, cert)
        with tls_channel(running.port, renewed.cert) as channel:
            assert health_of(channel) == health_pb2.HealthCheckResponse.SERVING  # the new certificate
        with tls_channel(running.port, authority.cert) as channel, pytest.raises(grpc.RpcError):
            health_of(channel)  # a new connection no longer gets the old one
        assert health_of(old) == health_pb2.HealthCheckResponse.SERVING  # the open connection goes on
        old.close()
    finally:
        running.stop(grace_s=0)


def test_a_certificate_and_key_that_do_not_match_are_refused_naming_no_path(authority, tmp_path):
    one, other = authority.issue("one"), authority.issue("other")
    with pytest.raises(TlsFilesError) as refused:
        check_pair(str(one.cert), str(other.key))
    assert "do not load as a pair" in str(refused.value) and str(tmp_path) not in str(refused.value)
    settings = Settings(tls_cert_file=str(one.cert), tls_key_file=str(other.key))
    assert "do not load as a pair" in refusal(settings, proxied=True)
    assert "needs nginx" in refusal(Settings(tls_cert_file=str(one.cert), tls_key_file=str(one.key)), proxied=False)


def test_serve_hands_nginx_a_changed_certificate_only_once_it_loads_as_a_pair(authority, server_files):
    cert, key = server_files
    watch = CertificateWatch(Settings(tls_cert_file=str(cert), tls_key_file=str(key)))
    watch.watched = Watched(watch.watched.paths, check_s=0)
    assert watch.changed() == (False, "")
    renewed = authority.issue("renewed")
    replace(renewed.cert, cert)  # the certificate first, its key not yet
    reload_now, said = watch.changed()
    assert not reload_now and "keeps serving the certificate read before" in said and str(cert) not in said
    replace(renewed.key, key)
    assert watch.changed()[0] is True


def test_nginx_reads_its_certificate_again_only_when_the_bytes_changed_so_a_touch_or_a_key_sighup_drops_nothing(
    authority, server_files
):
    cert, key = server_files
    watch = CertificateWatch(Settings(tls_cert_file=str(cert), tls_key_file=str(key)))
    watch.watched = Watched(watch.watched.paths, check_s=0)
    os.utime(cert, ns=(1, 1))  # touched: its stat changed, its bytes did not
    assert watch.changed() == (False, "") and watch.read_again() == (False, "")  # SIGHUP for the keys alone
    renewed = authority.issue("renewed")
    status = os.stat(cert)
    for source, target in ((renewed.cert, cert), (renewed.key, key)):
        with open(target, "r+b") as rewritten:  # in place: the same inode
            rewritten.write(source.read_bytes())
            rewritten.truncate()
    os.utime(cert, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert watch.read_again()[0] is True  # SIGHUP: the bytes compared whatever the stat says
    assert watch.read_again() == (False, "")  # handed to nginx once


def test_serve_says_whether_keys_and_tls_are_on_and_warns_once_about_an_open_public_front(authority, server_files):
    plain = announcement(Settings(), "0.0.0.0", grpc=True)
    assert plain[:2] == ["serve: API keys: off; /metrics open", "serve: TLS: off"]
    assert sum("WARNING" in line for line in plain) == 1 and "no API keys and no TLS" in plain[2]
    assert not any("WARNING" in line for line in announcement(Settings(), "127.0.0.1", grpc=True))
    cert, key = server_files
    secured = announcement(Settings(tls_cert_file=str(cert), tls_key_file=str(key)), "0.0.0.0", grpc=True)
    assert secured[1].startswith("serve: TLS: on for the REST and gRPC fronts") and len(secured) == 2
    assert not any(str(cert.parent) in line for line in secured)


def test_nginx_with_tls_takes_tls_1_2_and_1_3_only_http2_too_and_requires_a_client_certificate_at_the_handshake(
    authority, server_files
):
    cert, key = server_files
    settings = Settings(tls_cert_file=str(cert), tls_key_file=str(key), tls_client_ca_file=str(authority.cert))
    rendered = rest_proxy.render(settings, "8501", cert.parent / "app.sock", cert.parent / "health.sock", cert.parent)
    assert "listen 8501 ssl http2;" in rendered and "ssl_protocols TLSv1.2 TLSv1.3;" in rendered
    assert "ssl_verify_client on;" in rendered and "ssl_conf_command VerifyMode Require;" in rendered
    assert "ssl_" not in rest_proxy.render(Settings(), "8501", cert.parent / "a", cert.parent / "h", cert.parent)


def test_serve_refuses_a_setting_that_cannot_be_used_naming_it(monkeypatch, capsys):
    from fastai_serving_scripts import serve

    monkeypatch.setenv("FASTAI_SERVING_METRICS_ACCESS", "private")
    assert serve.main([]) == 2
    assert "FASTAI_SERVING_METRICS_ACCESS='private': use one of open, keyed, loopback" in capsys.readouterr().err
