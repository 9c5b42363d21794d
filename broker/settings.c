/*
 * The broker's config table: one row per setting, with bounds and defaults.
 * Not the loader (common/config.c) and not the tenants or policy files,
 * which have their own formats (tenants.c, policy/policy.c).
 */
#include "broker/settings.h"

#include <stddef.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"

#define CFG struct mer_broker_cfg

static const char *check_http_listen(const void *field, const void *cfg,
				     char *msg, size_t n)
{
	const char *url = *(char *const *)field;
	const CFG *c = cfg;

	(void)msg;
	(void)n;
	if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
		return "must start with http:// or https://";
	if (strncmp(url, "https://", 8) == 0 &&
	    (!c->tls_cert_file || !*c->tls_cert_file || !c->tls_key_file ||
	     !*c->tls_key_file))
		return "https needs tls.cert_file and tls.key_file";
	return NULL;
}

static const char *check_advertise(const void *field, const void *cfg,
				   char *msg, size_t n)
{
	const char *url = *(char *const *)field;

	(void)cfg;
	(void)msg;
	(void)n;
	if (url[0] && strncmp(url, "http://", 7) != 0 &&
	    strncmp(url, "https://", 8) != 0)
		return "must start with http:// or https://";
	return NULL;
}

static const char *check_prefix(const void *field, const void *cfg, char *msg,
				size_t n)
{
	const char *p = *(char *const *)field;

	(void)cfg;
	(void)msg;
	(void)n;
	if (p[0] != '/' || p[strlen(p) - 1] == '/')
		return "must start with '/' and not end with one";
	return NULL;
}

static const char *check_level(const void *field, const void *cfg, char *msg,
			       size_t n)
{
	enum mer_log_level l;

	(void)cfg;
	(void)msg;
	(void)n;
	if (mer_log_level_parse(*(char *const *)field, &l) != 0)
		return "must be one of: debug, info, warn, error";
	return NULL;
}

static const struct mer_cfg_row rows[] = {
    {MER_CFG_ROW_STRING("listen.http", CFG, http_listen, 8, 256,
			"http://127.0.0.1:8080"),
     .validate = check_http_listen,
     .help = "REST API address (http:// or https://)"},
    {MER_CFG_ROW_STRING("listen.link", CFG, link_listen, 0, 256, NULL),
     .help = "agent link address (nng URL, e.g. tcp://0.0.0.0:7400); "
	     "empty: no agents (needs key_file)"},
    {MER_CFG_ROW_PATH("tls.cert_file", CFG, tls_cert_file, NULL),
     .flags = MER_CFG_READABLE, .help = "REST TLS certificate (PEM)"},
    {MER_CFG_ROW_PATH("tls.key_file", CFG, tls_key_file, NULL),
     .flags = MER_CFG_READABLE, .help = "REST TLS key (PEM)"},
    {MER_CFG_ROW_STRLIST("etcd.endpoints", CFG, etcd_endpoints, 1, 16, NULL),
     .flags = MER_CFG_REQUIRED, .help = "etcd client URLs"},
    {MER_CFG_ROW_STRING("etcd.prefix", CFG, etcd_prefix, 2, 128, "/meridian"),
     .validate = check_prefix, .help = "key prefix (docs/STATE.md)"},
    {MER_CFG_ROW_DURATION("etcd.timeout", CFG, etcd_timeout_ms, 100,
			  5 * 60 * 1000, "5s"),
     .help = "per-request etcd timeout"},
    {MER_CFG_ROW_INT64("etcd.max_txn_ops", CFG, etcd_max_txn_ops, 16, 100000,
		       "128"),
     .help = "etcd's --max-txn-ops: no txn the broker sends has more ops"},
    {MER_CFG_ROW_PATH("etcd.tls.ca_file", CFG, etcd_ca_file, NULL),
     .flags = MER_CFG_READABLE},
    {MER_CFG_ROW_PATH("etcd.tls.cert_file", CFG, etcd_cert_file, NULL),
     .flags = MER_CFG_READABLE},
    {MER_CFG_ROW_PATH("etcd.tls.key_file", CFG, etcd_key_file, NULL),
     .flags = MER_CFG_READABLE},
    {MER_CFG_ROW_PATH("key_file", CFG, key_file, NULL),
     .help = "broker key pair, created 0600 when missing"},
    {MER_CFG_ROW_PATH("policy_file", CFG, policy_file, NULL),
     .flags = MER_CFG_READABLE,
     .help = "policy applied at start and on SIGHUP"},
    {MER_CFG_ROW_PATH("tenants_file", CFG, tenants_file, NULL),
     .flags = MER_CFG_REQUIRED | MER_CFG_READABLE,
     .help = "bearer token hashes, tenants and roles"},
    {MER_CFG_ROW_PATH("federation_file", CFG, federation_file, NULL),
     .flags = MER_CFG_READABLE,
     .help = "static site snapshots added to the agents' reports"},
    {MER_CFG_ROW_INT64("http.workers", CFG, http_workers, 1, 256, "16")},
    {MER_CFG_ROW_INT64("http.max_queue", CFG, http_max_queue, 1, 65536,
		       "1024")},
    {MER_CFG_ROW_SIZE("http.max_body", CFG, http_max_body, 1024, 64 << 20,
		      "1MiB")},
    {MER_CFG_ROW_DURATION("http.body_timeout", CFG, http_body_timeout_ms, 100,
			  10 * 60 * 1000, "10s")},
    {MER_CFG_ROW_DURATION("http.header_timeout", CFG, http_header_timeout_ms,
			  100, 10 * 60 * 1000, "10s"),
     .help = "request line and headers must arrive within this"},
    {MER_CFG_ROW_DURATION("http.idle_timeout", CFG, http_idle_timeout_ms, 100,
			  60 * 60 * 1000, "60s"),
     .help = "idle keep-alive connections are closed after this"},
    {MER_CFG_ROW_INT64("http.max_connections", CFG, http_max_connections, 1,
		       1000000, "1024"),
     .help = "open client connections; past it: 503 and close"},
    {MER_CFG_ROW_SIZE("http.max_header_bytes", CFG, http_max_header_bytes, 1024,
		      1 << 20, "8KiB"),
     .help = "request line and headers; past it: 431"},
    {MER_CFG_ROW_INT64("jobs.batch_max", CFG, batch_max, 1, 256, "128"),
     .help = "jobs written per etcd txn (group commit)"},
    {MER_CFG_ROW_DURATION("jobs.batch_linger", CFG, batch_linger_ms, 0, 1000,
			  "0ms")},
    {MER_CFG_ROW_INT64("jobs.page_limit", CFG, page_limit, 1, 1000, "100")},
    {MER_CFG_ROW_DURATION("jobs.idempotency_retention", CFG, idem_keep_ms, 0,
			  366LL * 24 * 3600 * 1000, "24h"),
     .help = "how long a retry with the same Idempotency-Key gets the first "
	     "answer (0: for ever)"},
    {MER_CFG_ROW_DURATION("placement.interval", CFG, placement_interval_ms, 10,
			  10 * 60 * 1000, "2s"),
     .help = "how often pending stages are tried again"},
    {MER_CFG_ROW_DURATION("sites.report_interval", CFG, report_interval_ms, 100,
			  60 * 60 * 1000, "10s")},
    {MER_CFG_ROW_INT64("sites.lost_after", CFG, lost_after, 1, 1000, "3"),
     .help = "report intervals of silence before a site is lost"},
    {MER_CFG_ROW_STRING("log_level", CFG, log_level, 4, 5, "info"),
     .validate = check_level},
    {MER_CFG_ROW_STRING("broker.id", CFG, broker_id, 0, 128, ""),
     .help = "this broker's name in the leader key; unique per broker "
	     "(empty: advertise.rest)"},
    {MER_CFG_ROW_STRING("advertise.rest", CFG, advertise_rest, 0, 256, ""),
     .validate = check_advertise,
     .help = "REST URL followers redirect writes to while this broker "
	     "leads (empty: listen.http with its real port)"},
    {MER_CFG_ROW_STRING("advertise.link", CFG, advertise_link, 0, 256, ""),
     .help = "agent link address published while this broker leads "
	     "(empty: listen.link with its real port)"},
    {MER_CFG_ROW_DURATION("leader.lease_ttl", CFG, leader_ttl_ms, 2000,
			  60 * 1000, "5s"),
     .help = "leader lease TTL: how long a crashed leader keeps the "
	     "role (a stopped one resigns at once)"},
};

const struct mer_cfg_table mer_broker_cfg_table = MER_CFG_TABLE(CFG, rows);

int mer_broker_cfg_load(const char *path, struct mer_broker_cfg *cfg, char *err,
			size_t errlen)
{
	return mer_cfg_load_file(&mer_broker_cfg_table, path, cfg, err, errlen);
}

void mer_broker_cfg_free(struct mer_broker_cfg *cfg)
{
	mer_cfg_free(&mer_broker_cfg_table, cfg);
}
