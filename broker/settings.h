/*
 * The broker's configuration file (docs/CONFIG.md has the format; the rows
 * are in settings.c): REST and link listen addresses, etcd, key, policy and
 * tenants files, TLS, request limits and the job store's batching. Loading
 * is common/config.h's; this header only names the fields.
 */
#ifndef MERIDIAN_BROKER_SETTINGS_H
#define MERIDIAN_BROKER_SETTINGS_H

#include <stdint.h>

#include "common/config.h"

struct mer_broker_cfg {
	char *http_listen;   /* "http://127.0.0.1:8080" or https:// */
	char *tls_cert_file; /* https only */
	char *tls_key_file;
	char *link_listen; /* "tcp://0.0.0.0:7400" (dispatch; see api) */
	struct mer_strlist etcd_endpoints;
	char *etcd_prefix; /* "/meridian" */
	int64_t etcd_timeout_ms;
	int64_t etcd_max_txn_ops; /* the etcd server's --max-txn-ops */
	char *etcd_ca_file;
	char *etcd_cert_file;
	char *etcd_key_file;
	char *key_file;	       /* broker's long-term key (0600) */
	char *policy_file;     /* "" = the policy in etcd, else built-in */
	char *tenants_file;    /* bearer tokens (hashes), required */
	char *federation_file; /* optional static snapshots (demo, tests) */
	int64_t http_workers;
	int64_t http_max_queue;
	int64_t http_max_body;
	int64_t http_body_timeout_ms;
	int64_t http_header_timeout_ms;
	int64_t http_idle_timeout_ms;
	int64_t http_max_connections;
	int64_t http_max_header_bytes;
	int64_t batch_max;	 /* jobs per etcd txn */
	int64_t idem_keep_ms;	 /* idempotency answers kept (0: for ever) */
	int64_t batch_linger_ms; /* extra wait for company (0: group commit
				    only while a txn is in flight) */
	int64_t page_limit;	 /* default and maximum of ?limit= */
	int64_t placement_interval_ms;
	int64_t report_interval_ms;
	int64_t lost_after; /* report intervals */
	char *log_level;
	/* Leader election (leader.c, docs/STATE.md "Leader"). */
	char *broker_id;       /* "" = advertise.rest */
	char *advertise_rest;  /* "" = listen.http (real port) */
	char *advertise_link;  /* "" = listen.link (real port) */
	int64_t leader_ttl_ms; /* the leader lease's TTL */
};

extern const struct mer_cfg_table mer_broker_cfg_table;

/* Loads path into a zeroed cfg (see mer_cfg_load_file). */
int mer_broker_cfg_load(const char *path, struct mer_broker_cfg *cfg, char *err,
			size_t errlen);
void mer_broker_cfg_free(struct mer_broker_cfg *cfg);

#endif
