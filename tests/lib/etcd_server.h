/*
 * A real etcd (/usr/bin/etcd, or $MERIDIAN_ETCD) for integration tests: one
 * member on two free loopback ports (client and peer), a fresh temp data dir
 * and a unique --name, listening and advertising on 127.0.0.1 only. Its
 * process is registered with tests/lib/proc, so it is stopped even when a
 * test fails or is interrupted.
 *
 * The member runs with --max-txn-ops=1024 (etcd's default is 128) because
 * Meridian batches many writes into one txn; production deployments need
 * the same flag (see docs/ETCD.md).
 *
 * Typical use:
 *   struct t_etcd *e;
 *   T_OK(t_etcd_start(&e));
 *   ... mer_etcd_open() with t_etcd_url(e) ...
 *   t_etcd_free(e);   // stop, remove the data dir
 */
#ifndef MERIDIAN_TESTS_ETCD_SERVER_H
#define MERIDIAN_TESTS_ETCD_SERVER_H

struct t_etcd;

/*
 * Starts etcd and waits (up to 20 s) until it serves the v3 gateway. Picks
 * new ports and retries when etcd exits early (a port was taken between
 * picking and binding). Skips nothing: if etcd is missing, returns MER_EIO
 * and the log says why.
 */
int t_etcd_start(struct t_etcd **out);

/* TLS on the client port (the peer port stays plain: one member). */
struct t_etcd_tls {
	const char *ca_file;   /* CA of the client certificates */
	const char *cert_file; /* server certificate, SAN IP:127.0.0.1 */
	const char *key_file;
	/* When set, etcd requires client certificates signed by ca_file
	 * (--client-cert-auth), and the readiness check presents these. */
	const char *client_cert_file;
	const char *client_key_file;
};

/* As t_etcd_start, serving https://127.0.0.1:PORT (see t_make_certs in
 * tests/lib/proc.h for test certificates). The paths must stay valid until
 * t_etcd_free (restart reuses them). */
int t_etcd_start_tls(const struct t_etcd_tls *tls, struct t_etcd **out);

/* "http://127.0.0.1:PORT" (https with TLS), valid until t_etcd_free. */
const char *t_etcd_url(const struct t_etcd *e);
/* The client port, the data dir and etcd's log file path. */
int t_etcd_port(const struct t_etcd *e);
const char *t_etcd_dir(const struct t_etcd *e);
const char *t_etcd_log(const struct t_etcd *e);

/* Stops etcd (SIGTERM, then SIGKILL after 5 s), keeping its data dir and
 * ports. No-op when stopped. */
int t_etcd_stop(struct t_etcd *e);

/* Starts it again on the same ports and data dir (stopping it first if it
 * runs) and waits until ready. */
int t_etcd_restart(struct t_etcd *e);

/* Stops etcd, removes its temp dir (data and log) and frees e. Accepts
 * NULL. Set MERIDIAN_KEEP_TMP=1 to keep the dir for debugging. */
void t_etcd_free(struct t_etcd *e);

#endif
