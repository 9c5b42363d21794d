/*
 * Starts and stops a single-member etcd for integration tests (see
 * etcd_server.h). Not a cluster manager: one member, loopback only.
 */
#include "tests/lib/etcd_server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "tests/lib/proc.h"

struct t_etcd {
	char *dir; /* temp dir: data/ and etcd.log */
	char data[4096];
	char log[4096];
	char url[64];
	char peer_url[64];
	char name[64];
	int client_port;
	int peer_port;
	struct t_proc *proc;
	const struct t_etcd_tls *tls;
	struct t_etcd_tls tls_copy;
};

static int spawn(struct t_etcd *e)
{
	const char *bin = getenv("MERIDIAN_ETCD");
	char a_name[96], a_data[4200], a_lcu[96], a_acu[96], a_lpu[96],
	    a_ipu[96], a_ic[192];
	int rv;

	if (!bin || !*bin)
		bin = "/usr/bin/etcd";
	snprintf(a_name, sizeof(a_name), "--name=%s", e->name);
	snprintf(a_data, sizeof(a_data), "--data-dir=%s", e->data);
	snprintf(a_lcu, sizeof(a_lcu), "--listen-client-urls=%s", e->url);
	snprintf(a_acu, sizeof(a_acu), "--advertise-client-urls=%s", e->url);
	snprintf(a_lpu, sizeof(a_lpu), "--listen-peer-urls=%s", e->peer_url);
	snprintf(a_ipu, sizeof(a_ipu), "--initial-advertise-peer-urls=%s",
		 e->peer_url);
	snprintf(a_ic, sizeof(a_ic), "--initial-cluster=%s=%s", e->name,
		 e->peer_url);
	char a_cert[4200] = "", a_key[4200] = "", a_ca[4200] = "";
	char *argv[24] = {
	    (char *)bin,
	    a_name,
	    a_data,
	    a_lcu,
	    a_acu,
	    a_lpu,
	    a_ipu,
	    a_ic,
	    "--initial-cluster-state=new",
	    "--max-txn-ops=1024",
	    "--logger=zap",
	    "--log-level=warn",
	    NULL,
	};
	int n = 12;
	if (e->tls) {
		snprintf(a_cert, sizeof(a_cert), "--cert-file=%s",
			 e->tls->cert_file);
		snprintf(a_key, sizeof(a_key), "--key-file=%s",
			 e->tls->key_file);
		argv[n++] = a_cert;
		argv[n++] = a_key;
		if (e->tls->client_cert_file) {
			snprintf(a_ca, sizeof(a_ca), "--trusted-ca-file=%s",
				 e->tls->ca_file);
			argv[n++] = a_ca;
			argv[n++] = "--client-cert-auth";
		}
		argv[n] = NULL;
	}
	rv = t_proc_spawn(bin, argv, NULL, e->log, &e->proc);
	if (rv != 0)
		return rv;
	char ready[128];
	snprintf(ready, sizeof(ready), "%s/v3/kv/range", e->url);
	/* A range answers only once the member has a leader and applies
	 * reads, which is what the tests need (not just an open port). */
	if (e->tls)
		rv = t_wait_https(ready, "{\"key\":\"AA==\"}", e->tls->ca_file,
				  e->tls->client_cert_file,
				  e->tls->client_key_file, 20000, e->proc);
	else
		rv = t_wait_http(ready, "{\"key\":\"AA==\"}", 20000, e->proc);
	if (rv != 0) {
		t_proc_stop(e->proc, 2000, NULL);
		e->proc = NULL;
	}
	return rv;
}

static int pick_ports(struct t_etcd *e)
{
	int rv;

	do {
		if ((rv = t_free_port(&e->client_port)) != 0)
			return rv;
		if ((rv = t_free_port(&e->peer_port)) != 0)
			return rv;
	} while (e->client_port == e->peer_port);
	snprintf(e->url, sizeof(e->url), "%s://127.0.0.1:%d",
		 e->tls ? "https" : "http", e->client_port);
	snprintf(e->peer_url, sizeof(e->peer_url), "http://127.0.0.1:%d",
		 e->peer_port);
	return 0;
}

int t_etcd_start(struct t_etcd **out)
{
	return t_etcd_start_tls(NULL, out);
}

int t_etcd_start_tls(const struct t_etcd_tls *tls, struct t_etcd **out)
{
	static int seq;
	struct t_etcd *e;
	int rv;

	*out = NULL;
	if (tls && (!tls->cert_file || !tls->key_file ||
		    (tls->client_cert_file && !tls->ca_file)))
		return MER_EINVAL;
	e = calloc(1, sizeof(*e));
	if (!e)
		return MER_ENOMEM;
	if (tls) {
		e->tls_copy = *tls;
		e->tls = &e->tls_copy;
	}
	if ((rv = t_tmpdir("etcd", &e->dir)) != 0) {
		free(e);
		return rv;
	}
	snprintf(e->data, sizeof(e->data), "%s/data", e->dir);
	snprintf(e->log, sizeof(e->log), "%s/etcd.log", e->dir);
	snprintf(e->name, sizeof(e->name), "mer-%d-%d", (int)getpid(), ++seq);
	for (int attempt = 0; attempt < 3; attempt++) {
		if ((rv = pick_ports(e)) != 0)
			break;
		rv = spawn(e);
		if (rv != MER_ECLOSED)
			break;
		/* etcd exited at once: most likely a port was taken. A
		 * failed first boot may leave a half-made data dir. */
		t_rmtree(e->data);
	}
	if (rv != 0) {
		fprintf(stderr,
			"t_etcd_start: etcd did not start (%d); log %s\n", rv,
			e->log);
		t_etcd_free(e);
		return rv;
	}
	*out = e;
	return 0;
}

const char *t_etcd_url(const struct t_etcd *e)
{
	return e->url;
}

int t_etcd_port(const struct t_etcd *e)
{
	return e->client_port;
}

const char *t_etcd_dir(const struct t_etcd *e)
{
	return e->dir;
}

const char *t_etcd_log(const struct t_etcd *e)
{
	return e->log;
}

int t_etcd_stop(struct t_etcd *e)
{
	int rv = 0;

	if (e && e->proc) {
		rv = t_proc_stop(e->proc, 5000, NULL);
		e->proc = NULL;
	}
	return rv;
}

int t_etcd_restart(struct t_etcd *e)
{
	t_etcd_stop(e);
	/* Same ports and data dir: the member and its history survive. A
	 * port grabbed by someone else meanwhile makes this fail, which the
	 * test then reports. */
	return spawn(e);
}

void t_etcd_free(struct t_etcd *e)
{
	const char *keep = getenv("MERIDIAN_KEEP_TMP");

	if (!e)
		return;
	t_etcd_stop(e);
	if (keep && strcmp(keep, "1") == 0)
		fprintf(stderr, "t_etcd_free: keeping %s\n", e->dir);
	else
		t_rmtree(e->dir);
	free(e->dir);
	free(e);
}
