/*
 * The site config table and the structural checks of its nested parts
 * (labels, shared pools, GPU prices, datasets). Only parsing and checking:
 * dataset paths are looked at when a summary is built, not here, so a
 * dataset that appears later is seen without a restart.
 */
#include "site-agent/config.h"

#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"

static const struct mer_cfg_enum sched_enums[] = {
    {"slurm", MER_AGENT_SLURM},
    {"kubernetes", MER_AGENT_KUBERNETES},
    {"yarn", MER_AGENT_YARN},
    {"sim", MER_AGENT_SIM},
    {NULL, 0},
};

const char *mer_agent_sched_name(int kind)
{
	for (size_t i = 0; sched_enums[i].name; i++) {
		if (sched_enums[i].value == kind)
			return sched_enums[i].name;
	}
	return "unknown";
}

/* Names that travel in the summary must pass the broker's check
 * (policy/jv.c): 1-63 of A-Z a-z 0-9 . _ : / -. */
static int name_ok(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (n == 0 || n > 63)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '.' || c == '_' ||
		      c == '-' || c == ':' || c == '/'))
			return 0;
	}
	return 1;
}

static const char *check_name(const void *field, const void *cfg, char *msg,
			      size_t n)
{
	const char *s = *(char *const *)field;

	(void)cfg;
	(void)msg;
	(void)n;
	if (!name_ok(s))
		return "must be 1-63 characters of A-Z a-z 0-9 . _ : / -";
	return NULL;
}

/* A Kubernetes namespace is a DNS-1123 label: it goes into API paths. */
static const char *check_dns_label(const void *field, const void *cfg,
				   char *msg, size_t n)
{
	const char *s = *(char *const *)field;
	size_t len = s ? strlen(s) : 0;

	(void)cfg;
	(void)msg;
	(void)n;
	if (len == 0 || len > 63 || s[0] == '-' || s[len - 1] == '-')
		goto bad;
	for (size_t i = 0; i < len; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') ||
		      (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
			goto bad;
	return NULL;
bad:
	return "must be a DNS-1123 label: 1-63 of a-z 0-9 -, starting and "
	       "ending with a letter or digit";
}

static const char *check_url(const void *field, const void *cfg, char *msg,
			     size_t n)
{
	const char *s = *(char *const *)field;
	const struct mer_agent_cfg *c = cfg;

	(void)msg;
	(void)n;
	if (!s || !*s)
		return c->kind == MER_AGENT_SIM
			   ? NULL
			   : "required for this scheduler kind";
	if (strncmp(s, "unix://", 7) == 0 && s[7] == '/')
		return NULL;
	if (strncmp(s, "http://", 7) == 0 || strncmp(s, "https://", 8) == 0)
		return NULL;
	return "must start with unix:///, http:// or https://";
}

/* The folder of the config file being loaded ("" for a string): relative
 * paths in it mean relative to the file, not to the agent's cwd. */
static _Thread_local char load_dir[2048];

/* Resolves a relative sim_file against the config's folder (replacing the
 * field's string), then checks it can be read. */
static const char *check_sim_file(const void *field, const void *cfg, char *msg,
				  size_t n)
{
	char **fp = (char **)field; /* loader-owned, malloc'd */
	const struct mer_agent_cfg *c = cfg;
	const char *s = *fp;

	if (!s || !*s)
		return c->kind == MER_AGENT_SIM
			   ? "required when scheduler.kind is sim"
			   : NULL;
	if (s[0] != '/' && load_dir[0]) {
		size_t len = strlen(load_dir) + strlen(s) + 2;
		char *abs = malloc(len);
		if (!abs)
			return "out of memory";
		snprintf(abs, len, "%s/%s", load_dir, s);
		free(*fp);
		*fp = abs;
		s = abs;
	}
	if (access(s, R_OK) != 0) {
		snprintf(msg, n, "cannot read %.300s: %s", s, strerror(errno));
		return msg;
	}
	return NULL;
}

static int fabric_ok(const char *s)
{
	return s &&
	       (!strcmp(s, "ib") || !strcmp(s, "roce") || !strcmp(s, "eth"));
}

static const char *check_fabric(const void *field, const void *cfg, char *msg,
				size_t n)
{
	const struct mer_strlist *l = field;

	(void)cfg;
	for (size_t i = 0; i < l->n; i++) {
		if (!fabric_ok(l->v[i])) {
			snprintf(msg, n, "'%.40s' is not one of ib, roce, eth",
				 l->v[i]);
			return msg;
		}
	}
	return NULL;
}

/* ---- the nested JSON settings ----------------------------------------
 * Objects of free keys (labels, GPU prices) are checked member by member;
 * lists of small objects (shared pools, datasets) by a table of the keys
 * an element may have. Errors name the member: site.labels.country,
 * datasets[2].path. */

typedef int (*member_check_fn)(const struct mer_json_doc *doc, const char *path,
			       const char *key, const json_t *val, char *err,
			       size_t errlen);

/* Runs check on every member of the object v. */
static int check_members(const struct mer_json_doc *doc, const char *path,
			 const json_t *v, member_check_fn check, char *err,
			 size_t errlen)
{
	const char *key;
	json_t *val;
	char p[256];
	int rv;

	json_object_foreach ((json_t *)v, key, val) {
		snprintf(p, sizeof(p), "%s", path);
		mer_json_path_append(p, sizeof(p), key);
		if ((rv = check(doc, p, key, val, err, errlen)))
			return rv;
	}
	return 0;
}

static int label_ok(const struct mer_json_doc *doc, const char *path,
		    const char *key, const json_t *val, char *err,
		    size_t errlen)
{
	(void)key;
	if (json_is_string(val))
		return 0;
	mer_json_doc_errf(doc, path, err, errlen, "expected a string, got %s",
			  mer_json_type_name(val));
	return MER_EINVAL;
}

static int check_labels(const struct mer_json_doc *doc, const char *path,
			const json_t *v, const void *cfg, char *err,
			size_t errlen)
{
	(void)cfg;
	return check_members(doc, path, v, label_ok, err, errlen);
}

static int gpu_price_ok(const struct mer_json_doc *doc, const char *path,
			const char *key, const json_t *val, char *err,
			size_t errlen)
{
	if (!name_ok(key) || strchr(key, ':')) {
		mer_json_doc_key_errf(doc, path, err, errlen,
				      "'%s' is not a GPU model name", key);
		return MER_EINVAL;
	}
	if (!json_is_number(val) || json_number_value(val) < 0 ||
	    json_number_value(val) > 1e6) {
		mer_json_doc_errf(doc, path, err, errlen,
				  "must be a number from 0 to 1e6");
		return MER_EINVAL;
	}
	return 0;
}

static int check_gpu_hour(const struct mer_json_doc *doc, const char *path,
			  const json_t *v, const void *cfg, char *err,
			  size_t errlen)
{
	(void)cfg;
	return check_members(doc, path, v, gpu_price_ok, err, errlen);
}

struct list_rules;

/* One key an element of a list may have, and the check of its value;
 * list and idx let a check compare with the elements before. */
struct member_rule {
	const char *key;
	int (*check)(const struct list_rules *lr,
		     const struct mer_json_doc *doc, const char *path,
		     const json_t *val, const json_t *list, size_t idx,
		     char *err, size_t errlen);
};

/* A list of small objects: what an element is called in messages, whether
 * a bare string stands for {"name": ...}, its keys, and the keys it needs
 * (with the message when one is absent). */
struct list_rules {
	const char *what;
	int bare_names;
	const struct member_rule *members; /* ends with a NULL key */
	const char *const *required;	   /* NULL-terminated */
	const char *missing;
};

static int bad_name(const struct list_rules *lr, const struct mer_json_doc *doc,
		    const char *path, char *err, size_t errlen)
{
	mer_json_doc_errf(doc, path, err, errlen,
			  "must be a %s name (1-63 of A-Z a-z 0-9 . _ : / -)",
			  lr->what);
	return MER_EINVAL;
}

static int member_name(const struct list_rules *lr,
		       const struct mer_json_doc *doc, const char *path,
		       const json_t *val, const json_t *list, size_t idx,
		       char *err, size_t errlen)
{
	(void)list;
	(void)idx;
	if (!json_is_string(val) || !name_ok(json_string_value(val)))
		return bad_name(lr, doc, path, err, errlen);
	return 0;
}

/* A name, and one no element before this one has. */
static int member_unique_name(const struct list_rules *lr,
			      const struct mer_json_doc *doc, const char *path,
			      const json_t *val, const json_t *list, size_t idx,
			      char *err, size_t errlen)
{
	int rv = member_name(lr, doc, path, val, list, idx, err, errlen);

	for (size_t j = 0; !rv && j < idx; j++) {
		const char *o = json_string_value(
		    json_object_get(json_array_get(list, j), "name"));
		if (o && strcmp(o, json_string_value(val)) == 0) {
			mer_json_doc_errf(doc, path, err, errlen,
					  "duplicate %s '%s'", lr->what, o);
			rv = MER_EINVAL;
		}
	}
	return rv;
}

static int member_fraction(const struct list_rules *lr,
			   const struct mer_json_doc *doc, const char *path,
			   const json_t *val, const json_t *list, size_t idx,
			   char *err, size_t errlen)
{
	double f = json_number_value(val);

	(void)lr;
	(void)list;
	(void)idx;
	if (json_is_number(val) && f >= 0 && f <= 1)
		return 0;
	mer_json_doc_errf(doc, path, err, errlen,
			  "must be a number from 0 to 1");
	return MER_EINVAL;
}

static int member_fabric(const struct list_rules *lr,
			 const struct mer_json_doc *doc, const char *path,
			 const json_t *val, const json_t *list, size_t idx,
			 char *err, size_t errlen)
{
	size_t i;
	json_t *e;
	char p[300];

	(void)lr;
	(void)list;
	(void)idx;
	if (!json_is_array(val)) {
		mer_json_doc_errf(doc, path, err, errlen,
				  "expected an array, got %s",
				  mer_json_type_name(val));
		return MER_EINVAL;
	}
	json_array_foreach (val, i, e) {
		if (fabric_ok(json_string_value(e)))
			continue;
		if (snprintf(p, sizeof(p), "%s[%zu]", path, i) >=
		    (int)sizeof(p))
			p[0] = '\0';
		mer_json_doc_errf(doc, p, err, errlen,
				  "must be one of ib, roce, eth");
		return MER_EINVAL;
	}
	return 0;
}

static int member_bytes(const struct list_rules *lr,
			const struct mer_json_doc *doc, const char *path,
			const json_t *val, const json_t *list, size_t idx,
			char *err, size_t errlen)
{
	(void)lr;
	(void)list;
	(void)idx;
	if (json_is_integer(val) && json_integer_value(val) >= 0)
		return 0;
	mer_json_doc_errf(doc, path, err, errlen,
			  "must be a non-negative integer");
	return MER_EINVAL;
}

static int member_path(const struct list_rules *lr,
		       const struct mer_json_doc *doc, const char *path,
		       const json_t *val, const json_t *list, size_t idx,
		       char *err, size_t errlen)
{
	const char *s = json_string_value(val);

	(void)lr;
	(void)list;
	(void)idx;
	if (!s || !*s) {
		mer_json_doc_errf(doc, path, err, errlen,
				  "must be a non-empty path "
				  "(/posix, hdfs://, s3://)");
		return MER_EINVAL;
	}
	if (s[0] != '/' && strncmp(s, "hdfs://", 7) && strncmp(s, "s3://", 5)) {
		mer_json_doc_errf(doc, path, err, errlen,
				  "must be an absolute posix path, hdfs:// or "
				  "s3://");
		return MER_EINVAL;
	}
	return 0;
}

static int member_tags(const struct list_rules *lr,
		       const struct mer_json_doc *doc, const char *path,
		       const json_t *val, const json_t *list, size_t idx,
		       char *err, size_t errlen)
{
	size_t j;
	json_t *t;
	int ok = json_is_array(val);

	(void)lr;
	(void)list;
	(void)idx;
	json_array_foreach (val, j, t)
		ok = ok && json_is_string(t) && *json_string_value(t);
	if (ok)
		return 0;
	mer_json_doc_errf(doc, path, err, errlen,
			  "must be a list of non-empty strings");
	return MER_EINVAL;
}

static int check_list(const struct list_rules *lr,
		      const struct mer_json_doc *doc, const char *path,
		      const json_t *v, char *err, size_t errlen)
{
	size_t i;
	json_t *e;
	char p[256], q[300];

	json_array_foreach (v, i, e) {
		const struct member_rule *m;
		const char *key;
		json_t *val;
		int rv;

		snprintf(p, sizeof(p), "%s[%zu]", path, i);
		if (lr->bare_names && json_is_string(e)) {
			if (!name_ok(json_string_value(e)))
				return bad_name(lr, doc, p, err, errlen);
			continue;
		}
		if (!json_is_object(e)) {
			if (lr->bare_names)
				mer_json_doc_errf(doc, p, err, errlen,
						  "expected a %s name or an "
						  "object, got %s",
						  lr->what,
						  mer_json_type_name(e));
			else
				mer_json_doc_errf(doc, p, err, errlen,
						  "expected an object, got %s",
						  mer_json_type_name(e));
			return MER_EINVAL;
		}
		json_object_foreach (e, key, val) {
			snprintf(q, sizeof(q), "%s", p);
			mer_json_path_append(q, sizeof(q), key);
			for (m = lr->members; m->key; m++)
				if (strcmp(key, m->key) == 0)
					break;
			if (!m->key) {
				char keys[128] = "";
				size_t off = 0;
				for (m = lr->members;
				     m->key && off < sizeof(keys); m++)
					off += (size_t)snprintf(
					    keys + off, sizeof(keys) - off,
					    "%s%s", off ? ", " : "", m->key);
				mer_json_doc_key_errf(doc, q, err, errlen,
						      "unknown key '%s' (%s)",
						      key, keys);
				return MER_EINVAL;
			}
			if ((rv = m->check(lr, doc, q, val, v, i, err, errlen)))
				return rv;
		}
		for (const char *const *r = lr->required; *r; r++) {
			if (!json_object_get(e, *r)) {
				mer_json_doc_errf(doc, p, err, errlen, "%s",
						  lr->missing);
				return MER_EINVAL;
			}
		}
	}
	return 0;
}

static const struct member_rule pool_members[] = {
    {"name", member_name},
    {"fraction", member_fraction},
    {"fabric", member_fabric},
    {NULL, NULL},
};
static const char *const pool_required[] = {"name", NULL};
static const struct list_rules pool_rules = {
    "pool", 1, pool_members, pool_required, "a pool needs a name"};

static const struct member_rule dataset_members[] = {
    {"name", member_unique_name},
    {"bytes", member_bytes},
    {"path", member_path},
    {"tags", member_tags},
    {NULL, NULL},
};
static const char *const dataset_required[] = {"name", "path", NULL};
static const struct list_rules dataset_rules = {
    "dataset", 0, dataset_members, dataset_required,
    "a dataset needs a name and a path"};

static int check_pools(const struct mer_json_doc *doc, const char *path,
		       const json_t *v, const void *cfg, char *err,
		       size_t errlen)
{
	(void)cfg;
	return check_list(&pool_rules, doc, path, v, err, errlen);
}

static int check_datasets(const struct mer_json_doc *doc, const char *path,
			  const json_t *v, const void *cfg, char *err,
			  size_t errlen)
{
	(void)cfg;
	return check_list(&dataset_rules, doc, path, v, err, errlen);
}

#define C struct mer_agent_cfg
static const struct mer_cfg_row rows[] = {
    {MER_CFG_ROW_STRING("site.name", C, name, 1, 63, NULL),
     .flags = MER_CFG_REQUIRED, .validate = check_name,
     .help = "the site's name in the federation"},
    {MER_CFG_ROW_STRING("site.region", C, region, 1, 63, NULL),
     .flags = MER_CFG_REQUIRED, .validate = check_name,
     .help = "region, e.g. cn-east-1"},
    {MER_CFG_ROW_STRING("site.zone", C, zone, 0, 63, ""),
     .help = "zone inside the region"},
    {MER_CFG_ROW_JSON("site.labels", C, labels, "{}"),
     .flags = MER_CFG_JSON_OBJECT, .check_json = check_labels,
     .help = "labels such as country and provider"},
    {MER_CFG_ROW_ENUM("scheduler.kind", C, kind, sched_enums, NULL),
     .flags = MER_CFG_REQUIRED, .help = "slurm, kubernetes, yarn or sim"},
    {MER_CFG_ROW_STRING("scheduler.url", C, url, 0, 1024, ""),
     .validate = check_url,
     .help = "unix:///path, http://host:port or https://host:port"},
    {MER_CFG_ROW_STRING("scheduler.user", C, user, 0, 64, ""),
     .help = "slurm: user name for X-SLURM-USER-NAME"},
    {MER_CFG_ROW_STRING("scheduler.token", C, token, 0, 8192, ""),
     .flags = MER_CFG_SECRET, .help = "slurm JWT or kubernetes bearer token"},
    {MER_CFG_ROW_PATH("scheduler.token_file", C, token_file, ""),
     .flags = MER_CFG_READABLE, .help = "file holding the token"},
    {MER_CFG_ROW_PATH("scheduler.ca_file", C, ca_file, ""),
     .flags = MER_CFG_READABLE, .help = "CA bundle for https"},
    {MER_CFG_ROW_BOOL("scheduler.insecure", C, insecure, "false"),
     .help = "skip TLS verification (never in production)"},
    {MER_CFG_ROW_STRING("scheduler.namespace", C, namespace_, 1, 63, "default"),
     .validate = check_dns_label,
     .help = "kubernetes namespace for stage Jobs"},
    {MER_CFG_ROW_BOOL("scheduler.volcano", C, volcano, "false"),
     .help = "kubernetes: Volcano installed; gang stages use it"},
    {MER_CFG_ROW_STRING("scheduler.queue", C, queue, 0, 63, ""),
     .help = "default partition / YARN queue / Volcano queue"},
    {MER_CFG_ROW_STRING("scheduler.api_version", C, api_version, 0, 16, ""),
     .help = "slurm: OpenAPI version (v0.0.38); empty = discover"},
    {MER_CFG_ROW_PATH("scheduler.sim_file", C, sim_file, ""),
     .validate = check_sim_file,
     .help = "sim: the simulated site's description"},
    {MER_CFG_ROW_DOUBLE("scheduler.time_scale", C, time_scale, 0.001, 1e6, "1"),
     .help = "sim: stage seconds that pass per real second"},
    {MER_CFG_ROW_DURATION("scheduler.timeout", C, timeout_ms, 100, 300000,
			  "10s"),
     .help = "per scheduler request"},
    {MER_CFG_ROW_DOUBLE("share.fraction", C, share_fraction, 0, 1, "1"),
     .help = "the most of each pool offered to the federation"},
    {MER_CFG_ROW_JSON("share.pools", C, share_pools, "[]"),
     .flags = MER_CFG_JSON_ARRAY, .check_json = check_pools,
     .help = "pools shared (names or {name, fraction, fabric}); [] = all"},
    {MER_CFG_ROW_STRLIST("fabric", C, fabric, 0, 3, NULL),
     .validate = check_fabric, .help = "ib, roce, eth"},
    {MER_CFG_ROW_STRLIST("storage", C, storage, 0, 16, NULL),
     .help = "storage systems: lustre, gpfs, hdfs, s3 ..."},
    {MER_CFG_ROW_JSON("prices.gpu_hour", C, gpu_hour, "{}"),
     .flags = MER_CFG_JSON_OBJECT, .check_json = check_gpu_hour,
     .help = "USD per GPU-hour by model"},
    {MER_CFG_ROW_DOUBLE("prices.core_hour", C, core_hour, 0, 1e6, "0"),
     .help = "USD per core-hour"},
    {MER_CFG_ROW_DOUBLE("prices.memory_gb_hour", C, memory_gb_hour, 0, 1e6,
			"0"),
     .help = "USD per GB-hour of memory"},
    {MER_CFG_ROW_DOUBLE("prices.egress_gb", C, egress_gb, 0, 1e6, "0"),
     .help = "USD per GB leaving the site"},
    {MER_CFG_ROW_DOUBLE("wan_gbps", C, wan_gbps, 0, 1e6, "0"),
     .help = "WAN bandwidth in Gbit/s; 0 = not limited"},
    {MER_CFG_ROW_JSON("datasets", C, datasets, "[]"),
     .flags = MER_CFG_JSON_ARRAY, .check_json = check_datasets,
     .help = "datasets held: name, bytes, path, tags"},
    {MER_CFG_ROW_PATH("agent.state_file", C, state_file,
		      "meridian-agent.state"),
     .help = "stage -> local job map, written atomically"},
    {MER_CFG_ROW_PATH("agent.key_file", C, key_file, "meridian-agent.key"),
     .help = "the site's key pair (0600)"},
    {MER_CFG_ROW_STRING("agent.broker", C, broker_url, 0, 1024, ""),
     .help = "broker link URL, tcp://host:7400"},
    {MER_CFG_ROW_STRING("agent.broker_key", C, broker_key, 0, 128, ""),
     .help = "pinned broker key fingerprint SHA256:..."},
    {MER_CFG_ROW_DURATION("agent.report_interval", C, report_interval_ms, 100,
			  3600000, "30s"),
     .help = "summary every interval (and on change)"},
    {MER_CFG_ROW_DURATION("agent.poll_interval", C, poll_interval_ms, 10,
			  600000, "5s"),
     .help = "how often running stages are checked"},
    {MER_CFG_ROW_DURATION("agent.retry_max", C, retry_max_ms, 10, 3600000,
			  "1m"),
     .help = "longest wait between retries of an unreachable scheduler"},
};
#undef C

const struct mer_cfg_table mer_agent_cfg_table =
    MER_CFG_TABLE(struct mer_agent_cfg, rows);

int mer_agent_cfg_load(const char *path, struct mer_agent_cfg *cfg, char *err,
		       size_t errlen)
{
	char dir[sizeof(load_dir)];
	int rv;

	snprintf(dir, sizeof(dir), "%s", path);
	snprintf(load_dir, sizeof(load_dir), "%s", dirname(dir));
	rv = mer_cfg_load_file(&mer_agent_cfg_table, path, cfg, err, errlen);
	load_dir[0] = '\0';
	return rv;
}

int mer_agent_cfg_load_string(const char *name, const char *text,
			      struct mer_agent_cfg *cfg, char *err,
			      size_t errlen)
{
	load_dir[0] = '\0';
	return mer_cfg_load_string(&mer_agent_cfg_table, name, text,
				   strlen(text), cfg, err, errlen);
}

void mer_agent_cfg_free(struct mer_agent_cfg *cfg)
{
	mer_cfg_free(&mer_agent_cfg_table, cfg);
}

void mer_agent_cfg_pool_share(const struct mer_agent_cfg *cfg, const char *pool,
			      int *shared, double *fraction,
			      const json_t **fabric)
{
	size_t i;
	json_t *e;

	*fraction = cfg->share_fraction;
	*fabric = NULL;
	*shared = json_array_size(cfg->share_pools) == 0;
	json_array_foreach (cfg->share_pools, i, e) {
		const char *n =
		    json_is_string(e)
			? json_string_value(e)
			: json_string_value(json_object_get(e, "name"));
		json_t *f;
		if (!n || strcmp(n, pool) != 0)
			continue;
		*shared = 1;
		if ((f = json_object_get(e, "fraction")))
			*fraction = json_number_value(f);
		*fabric = json_object_get(e, "fabric");
		return;
	}
}
