/*
 * The REST API (docs/api.yaml is its contract): authentication and roles,
 * jobs, placements, sites, join tokens, policy, health and metrics. Handlers
 * translate between HTTP and the store, membership and placer; they hold no
 * state of their own.
 */
#include "broker/broker.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "common/config.h"
#include "common/err.h"
#include "common/log.h"

#define KEY_MAX 320
/* Submissions and dry-runs may use a snapshot this old (the placer always
 * builds a fresh one and publishes it; API site changes invalidate it). A
 * rebuild uses the placer's builder (in-memory summaries, cached site
 * records), so a submission does not range over etcd's site reports. */
#define FED_MAX_AGE_MS 1000

static const char *const job_states[] = {
    MER_ST_PENDING,   MER_ST_PLACED, MER_ST_DISPATCHED, MER_ST_RUNNING,
    MER_ST_SUCCEEDED, MER_ST_FAILED, MER_ST_CANCELLED,	NULL};

static int terminal(const char *st)
{
	return st && (strcmp(st, MER_ST_SUCCEEDED) == 0 ||
		      strcmp(st, MER_ST_FAILED) == 0 ||
		      strcmp(st, MER_ST_CANCELLED) == 0);
}

/* ---- auth -------------------------------------------------------------- */

/* Fills who from the Authorization header; answers 401/403 itself. */
static int auth(struct mer_broker *b, struct mer_http_req *req,
		struct mer_http_res *res, int need_admin,
		struct mer_principal *who)
{
	const char *h = mer_http_req_header(req, "Authorization");
	int rv;

	if (!h || strncasecmp(h, "Bearer ", 7) != 0 || !h[7]) {
		mer_metrics_inc(b->metrics, MER_C_AUTH_FAILURES, 1);
		mer_http_res_header(res, "WWW-Authenticate", "Bearer");
		mer_http_res_error(res, 401, "unauthorized", NULL,
				   "a bearer token is required");
		return MER_EAUTH;
	}
	pthread_rwlock_rdlock(&b->lock);
	rv = mer_tenants_auth(b->tenants, h + 7, who);
	pthread_rwlock_unlock(&b->lock);
	if (rv) {
		mer_metrics_inc(b->metrics, MER_C_AUTH_FAILURES, 1);
		mer_http_res_header(res, "WWW-Authenticate",
				    "Bearer error=\"invalid_token\"");
		mer_http_res_error(res, 401, "unauthorized", NULL,
				   "unknown bearer token");
		return MER_EAUTH;
	}
	if (need_admin && who->role != MER_ROLE_ADMIN) {
		mer_http_res_error(res, 403, "forbidden", NULL,
				   "this needs the admin role");
		return MER_EPERM;
	}
	return 0;
}

/* "stages[1].gpu: must be..." -> field "stages[1].gpu". */
static void field_of(const char *err, char *field, size_t n)
{
	const char *c = strstr(err, ": ");
	size_t len = c ? (size_t)(c - err) : 0;

	field[0] = 0;
	if (!c || len >= n || memchr(err, ' ', len))
		return;
	memcpy(field, err, len);
	field[len] = 0;
}

static int bad_request(struct mer_http_res *res, const char *err)
{
	char field[256];

	field_of(err, field, sizeof(field));
	return mer_http_res_error(res, 400, "invalid", field[0] ? field : NULL,
				  "%s", err)
		   ? MER_ENOMEM
		   : 0;
}

/* Percent-encodes a query name or value (RFC 3986 unreserved kept). */
static int url_escape(const char *s, char *out, size_t n)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t k = 0;

	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		int plain = isalnum(ch) || ch == '-' || ch == '_' ||
			    ch == '.' || ch == '~';
		if (k + (plain ? 1 : 3) >= n)
			return MER_ETOOBIG;
		if (plain) {
			out[k++] = (char)ch;
		} else {
			out[k++] = '%';
			out[k++] = hex[ch >> 4];
			out[k++] = hex[ch & 15];
		}
	}
	out[k] = 0;
	return 0;
}

static int etcd_fail(struct mer_http_res *res, int rv)
{
	if (rv == MER_ENOTFOUND)
		return mer_http_res_error(res, 404, "not_found", NULL,
					  "no such object");
	mer_http_res_error(res, mer_http_status_for_err(rv), mer_errname(rv),
			   NULL, "state store: %s", mer_strerror(rv));
	return 0;
}

/* The job a request names, as a copy the caller may change, after the
 * request's tenant was checked (another tenant's job is "not found"). */
static int job_for(struct mer_broker *b, struct mer_http_req *req,
		   struct mer_http_res *res, const struct mer_principal *who,
		   json_t **rec)
{
	const char *id = mer_http_req_param(req, "id");
	int rv = mer_store_get(b->store, id, rec, NULL);

	if (rv == 0 && who->role != MER_ROLE_ADMIN &&
	    strcmp(json_string_value(json_object_get(*rec, "tenant"))
		       ? json_string_value(json_object_get(*rec, "tenant"))
		       : "",
		   who->tenant) != 0) {
		json_decref(*rec);
		*rec = NULL;
		rv = MER_ENOTFOUND;
	}
	if (rv == MER_ENOTFOUND) {
		mer_http_res_error(res, 404, "not_found", "id", "no job %s",
				   id ? id : "");
		return rv;
	}
	if (rv) {
		etcd_fail(res, rv);
		return rv;
	}
	return 0;
}

/* ---- jobs -------------------------------------------------------------- */

/* The job document as the tenant may submit it: tenant filled or checked.
 * Returns a new reference, or NULL having answered. */
static json_t *job_doc(struct mer_http_req *req, struct mer_http_res *res,
		       const struct mer_principal *who)
{
	json_t *root = mer_http_req_json(req), *copy;
	const json_t *t;

	if (!json_is_object(root)) {
		mer_http_res_error(res, 400, "invalid", NULL,
				   "a job must be a JSON object");
		return NULL;
	}
	t = json_object_get(root, "tenant");
	if (t && (!json_is_string(t) ||
		  !mer_tenant_name_valid(json_string_value(t)))) {
		mer_http_res_error(res, 400, "invalid", "tenant",
				   "tenant: must be a tenant name");
		return NULL;
	}
	if (t && who->role != MER_ROLE_ADMIN &&
	    strcmp(json_string_value(t), who->tenant) != 0) {
		mer_http_res_error(res, 403, "forbidden", "tenant",
				   "tenant: may only submit as %s",
				   who->tenant);
		return NULL;
	}
	copy = json_deep_copy(root);
	if (copy && !t)
		json_object_set_new(copy, "tenant", json_string(who->tenant));
	if (!copy)
		mer_http_res_error(res, 500, "internal", NULL, "out of memory");
	return copy;
}

static json_t *new_record(const struct mer_job *job, json_t *spec,
			  const char *id, long long now)
{
	json_t *stages = json_array();
	json_t *rec;

	for (size_t i = 0; stages && i < job->nstages; i++) {
		const struct mer_stage *s = &job->stages[i];
		json_t *after = json_array();
		for (size_t k = 0; after && k < s->nafter; k++)
			json_array_append_new(after, json_string(s->after[k]));
		json_array_append_new(
		    stages,
		    json_pack("{s:s, s:s, s:o, s:s, s:n, s:i, s:n}", "name",
			      s->name, "kind", mer_kind_name(s->kind), "after",
			      after ? after : json_array(), "state",
			      MER_ST_PENDING, "site", "attempts", 0,
			      "exit_code"));
	}
	rec = json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:o, s:O}", "id",
			id, "tenant", job->tenant, "name", job->name,
			"priority", mer_prio_name(job->priority), "state",
			MER_ST_PENDING, "created_at", (json_int_t)now,
			"updated_at", (json_int_t)now, "stages",
			stages ? stages : json_array(), "spec", spec);
	if (rec)
		json_object_set_new(json_object_get(rec, "spec"), "id",
				    json_string(id));
	return rec;
}

static int post_job(struct mer_http_req *req, struct mer_http_res *res,
		    void *arg)
{
	struct mer_broker *b = arg;
	struct mer_principal who;
	struct mer_job *job = NULL;
	json_t *spec = NULL, *rec = NULL, *resp = NULL;
	struct mer_submit_result sr = {0};
	const char *idem = mer_http_req_header(req, "Idempotency-Key");
	char err[1024], id[MER_JOB_ID_SIZE], hash_hex[65];
	unsigned char h[32];
	size_t blen = 0;
	const char *body = mer_http_req_body(req, &blen);
	int rv;

	if (auth(b, req, res, 0, &who))
		return 0;
	if (idem && (strlen(idem) < 1 || strlen(idem) > 255)) {
		mer_http_res_error(res, 400, "invalid", "Idempotency-Key",
				   "Idempotency-Key: 1 to 255 characters");
		return 0;
	}
	if (!(spec = job_doc(req, res, &who)))
		return 0;
	json_object_del(spec, "id");
	err[0] = 0;
	rv = mer_job_from_json(spec, NULL, &job, err, sizeof(err));
	if (rv == MER_EINVAL) {
		bad_request(res, err);
		goto out;
	}
	if (rv) {
		rv = MER_ENOMEM;
		goto out;
	}
	/* Refuse what no site could ever hold, naming the field. Without a
	 * snapshot (etcd trouble) or sites yet, the placer decides later. */
	struct mer_fed_ref *fr = NULL;
	if (mer_broker_fed_get(b, FED_MAX_AGE_MS, &fr, err, sizeof(err)) == 0) {
		int bad = fr->fed->nsites > 0 &&
			  mer_place_check_job(job, fr->fed, err, sizeof(err)) ==
			      MER_EINVAL;
		mer_broker_fed_put(fr);
		if (bad) {
			bad_request(res, err);
			rv = 0;
			goto out;
		}
	}
	mer_store_new_id(id);
	long long now = (long long)time(NULL);
	rec = new_record(job, spec, id, now);
	resp = rec ? json_pack("{s:s, s:s, s:s, s:s, s:I}", "id", id, "tenant",
			       job->tenant, "name", job->name, "state",
			       MER_ST_PENDING, "created_at", (json_int_t)now)
		   : NULL;
	if (!rec || !resp) {
		rv = MER_ENOMEM;
		goto out;
	}
	/* The hash covers the body as sent and the tenant it is for. */
	crypto_hash_sha256_state hs;
	crypto_hash_sha256_init(&hs);
	crypto_hash_sha256_update(&hs, (const unsigned char *)job->tenant,
				  strlen(job->tenant) + 1);
	crypto_hash_sha256_update(&hs, (const unsigned char *)body, blen);
	crypto_hash_sha256_final(&hs, h);
	sodium_bin2hex(hash_hex, sizeof(hash_hex), h, sizeof(h));
	rv = mer_store_submit(b->store, rec, resp, idem, hash_hex, &sr);
	if (rv == MER_EINVAL) {
		mer_http_res_error(res, 422, "idempotency_mismatch",
				   "Idempotency-Key",
				   "this Idempotency-Key was used with another "
				   "request body");
		rv = 0;
		goto out;
	}
	if (rv == MER_EBUSY) {
		mer_http_res_header(res, "Retry-After", "1");
		mer_http_res_error(res, 409, "idempotency_in_progress",
				   "Idempotency-Key",
				   "a request with this Idempotency-Key is "
				   "still being processed");
		rv = 0;
		goto out;
	}
	if (rv) {
		etcd_fail(res, rv);
		rv = 0;
		goto out;
	}
	if (sr.replayed) {
		mer_metrics_inc(b->metrics, MER_C_IDEM_REPLAYS, 1);
		mer_http_res_header(res, "Idempotent-Replayed", "true");
	} else {
		mer_metrics_inc(b->metrics, MER_C_JOBS_SUBMITTED, 1);
	}
	const char *rid = json_string_value(json_object_get(sr.response, "id"));
	char loc[64];
	snprintf(loc, sizeof(loc), "/v1/jobs/%s", rid ? rid : id);
	mer_http_res_header(res, "Location", loc);
	mer_http_res_json(res, sr.status ? sr.status : 201, sr.response);
	rv = 0;
out:
	json_decref(sr.response);
	json_decref(spec);
	json_decref(rec);
	json_decref(resp);
	mer_job_free(job);
	return rv;
}

static int parse_uint(const char *s, long lo, long hi, long *out)
{
	char *end;
	long v;

	if (!s || !*s || !isdigit((unsigned char)*s))
		return MER_EINVAL;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || v < lo || v > hi)
		return MER_EINVAL;
	*out = v;
	return 0;
}

static int list_jobs(struct mer_http_req *req, struct mer_http_res *res,
		     void *arg)
{
	static const char *const known[] = {"state", "name",   "cursor",
					    "limit", "tenant", NULL};
	struct mer_broker *b = arg;
	struct mer_principal who;
	struct mer_list_query q = {0};
	char next[MER_CURSOR_SIZE];
	json_t *items = NULL;
	long limit = b->cfg.page_limit;
	int rv;

	if (auth(b, req, res, 0, &who))
		return 0;
	for (size_t i = 0; i < mer_http_req_query_count(req); i++) {
		const char *n, *v;
		int ok = 0;
		mer_http_req_query_at(req, i, &n, &v);
		for (size_t k = 0; known[k]; k++)
			ok |= strcmp(n, known[k]) == 0;
		if (!ok)
			return mer_http_res_error(res, 400, "invalid", n,
						  "unknown query parameter "
						  "'%s'",
						  n);
	}
	q.state = mer_http_req_query(req, "state");
	q.name = mer_http_req_query(req, "name");
	q.cursor = mer_http_req_query(req, "cursor");
	const char *ls = mer_http_req_query(req, "limit");
	const char *ts = mer_http_req_query(req, "tenant");
	if (ls && parse_uint(ls, 1, (long)b->cfg.page_limit, &limit))
		return mer_http_res_error(res, 400, "invalid", "limit",
					  "limit: must be 1..%lld",
					  (long long)b->cfg.page_limit);
	if (q.state) {
		int ok = 0;
		for (size_t k = 0; job_states[k]; k++)
			ok |= strcmp(q.state, job_states[k]) == 0;
		if (!ok)
			return mer_http_res_error(
			    res, 400, "invalid", "state",
			    "state: must be one of pending, placed, "
			    "dispatched, running, succeeded, failed, "
			    "cancelled");
	}
	q.limit = (unsigned)limit;
	if (who.role == MER_ROLE_ADMIN) {
		if (ts && !mer_tenant_name_valid(ts))
			return mer_http_res_error(res, 400, "invalid", "tenant",
						  "tenant: not a tenant name");
		q.tenant = ts;
	} else {
		if (ts && strcmp(ts, who.tenant) != 0)
			return mer_http_res_error(
			    res, 403, "forbidden", "tenant",
			    "tenant: may only list %s", who.tenant);
		q.tenant = who.tenant;
	}
	rv = mer_store_list(b->store, &q, &items, next);
	if (rv == MER_EINVAL)
		return mer_http_res_error(res, 400, "invalid", "cursor",
					  "cursor: not a cursor from this "
					  "listing");
	if (rv)
		return etcd_fail(res, rv);
	return mer_http_res_json_new(
	    res, 200,
	    json_pack("{s:o, s:o}", "jobs", items, "next_cursor",
		      next[0] ? json_string(next) : json_null()));
}

static int get_job(struct mer_http_req *req, struct mer_http_res *res,
		   void *arg)
{
	struct mer_broker *b = arg;
	struct mer_principal who;
	json_t *rec = NULL;

	if (auth(b, req, res, 0, &who) || job_for(b, req, res, &who, &rec))
		return 0;
	json_object_del(rec, "placement");
	return mer_http_res_json_new(res, 200, rec);
}

static int mutate_cancel(void *arg, json_t *rec)
{
	long long now = (long long)time(NULL);
	const char *st = json_string_value(json_object_get(rec, "state"));
	json_t *stages = json_object_get(rec, "stages"), *s;
	int live = 0;
	size_t i;

	(void)arg;
	if (terminal(st))
		return MER_ECANCELED;
	json_array_foreach (stages, i, s) {
		const char *ss = json_string_value(json_object_get(s, "state"));
		if (terminal(ss))
			continue;
		if (ss && (strcmp(ss, MER_ST_DISPATCHED) == 0 ||
			   strcmp(ss, MER_ST_RUNNING) == 0)) {
			/* The agent must stop it first; dispatch sends the
			 * cancel and records the end. */
			json_object_set_new(s, "cancel_requested", json_true());
			live++;
			continue;
		}
		json_object_set_new(s, "state", json_string(MER_ST_CANCELLED));
		json_object_set_new(s, "finished_at", json_integer(now));
	}
	json_object_set_new(rec, "cancel_requested", json_true());
	if (!live) {
		json_object_set_new(rec, "state",
				    json_string(MER_ST_CANCELLED));
		json_object_set_new(rec, "finished_at", json_integer(now));
	}
	json_object_set_new(rec, "updated_at", json_integer(now));
	return 0;
}

static int cancel_job(struct mer_http_req *req, struct mer_http_res *res,
		      void *arg)
{
	struct mer_broker *b = arg;
	struct mer_principal who;
	json_t *rec = NULL, *after = NULL;
	int rv;

	if (auth(b, req, res, 0, &who) || job_for(b, req, res, &who, &rec))
		return 0;
	json_decref(rec);
	rv = mer_store_update(b->store, mer_http_req_param(req, "id"),
			      mutate_cancel, NULL, &after);
	if (rv)
		return etcd_fail(res, rv);
	mer_placer_note(b, after);
	mer_dispatch_resend(b, after); /* cancels of running stages */
	json_object_del(after, "placement");
	const char *st = json_string_value(json_object_get(after, "state"));
	return mer_http_res_json_new(res, terminal(st) ? 200 : 202, after);
}

static int get_placement(struct mer_http_req *req, struct mer_http_res *res,
			 void *arg)
{
	struct mer_broker *b = arg;
	struct mer_principal who;
	json_t *rec = NULL, *p;
	int rv;

	if (auth(b, req, res, 0, &who) || job_for(b, req, res, &who, &rec))
		return 0;
	p = json_object_get(rec, "placement");
	if (!p)
		rv = mer_http_res_error(res, 404, "not_placed", NULL,
					"job %s has not been through "
					"placement yet",
					mer_http_req_param(req, "id"));
	else
		rv = mer_http_res_json(res, 200, p);
	json_decref(rec);
	return rv;
}

static int dry_run(struct mer_http_req *req, struct mer_http_res *res,
		   void *arg)
{
	struct mer_broker *b = arg;
	struct mer_principal who;
	struct mer_job *job = NULL;
	struct mer_fed_ref *fr = NULL;
	struct mer_engine *eng = NULL;
	struct mer_placement *pl = NULL;
	struct mer_policy_ref *pr = NULL;
	json_t *spec = NULL, *out = NULL;
	const char *cs = mer_http_req_query(req, "candidates");
	long cand = 0;
	char err[1024];
	int rv = 0;

	if (auth(b, req, res, 0, &who))
		return 0;
	if (cs && parse_uint(cs, 0, 100000, &cand))
		return mer_http_res_error(res, 400, "invalid", "candidates",
					  "candidates: a number >= 0");
	if (!(spec = job_doc(req, res, &who)))
		return 0;
	err[0] = 0;
	rv = mer_job_from_json(spec, NULL, &job, err, sizeof(err));
	if (rv == MER_EINVAL) {
		rv = bad_request(res, err);
		goto out;
	}
	if (rv)
		goto out;
	rv = mer_broker_fed_get(b, FED_MAX_AGE_MS, &fr, err, sizeof(err));
	if (rv) {
		mer_http_res_error(res, 503, "unavailable", NULL,
				   "federation snapshot: %s", err);
		rv = 0;
		goto out;
	}
	pr = mer_broker_policy_get(b);
	if ((rv = mer_engine_new(fr->fed, pr->pol, &eng)))
		goto out;
	struct mer_place_input in = {.job = job, .now = (long long)time(NULL)};
	if ((rv = mer_engine_place(eng, &in, 0, &pl)))
		goto out;
	out = mer_placement_to_json(pl, (size_t)cand);
	if (out) {
		json_object_set_new(out, "policy_version",
				    json_integer(pr->version));
		json_object_set_new(out, "dry_run", json_true());
	}
	rv = mer_http_res_json_new(res, 200, out);
out:
	mer_placement_free(pl);
	mer_engine_free(eng);
	mer_broker_policy_put(b, pr);
	mer_broker_fed_put(fr);
	mer_job_free(job);
	json_decref(spec);
	return rv;
}

/* ---- sites ------------------------------------------------------------- */

static json_t *range_obj(struct mer_broker *b, const char *what, int *rv)
{
	char prefix[KEY_MAX];
	size_t plen =
	    mer_store_key(b->store, prefix, sizeof(prefix), "%s/", what);
	struct mer_etcd_range r = {0};
	json_t *out = json_object();

	*rv = mer_etcd_range_prefix(b->etcd, prefix, plen, NULL, 0, 0, 0, 0, &r,
				    NULL);
	if (*rv || !out) {
		json_decref(out);
		return NULL;
	}
	for (size_t i = 0; i < r.n; i++) {
		json_t *v =
		    json_loadb(r.kvs[i].value, r.kvs[i].value_len, 0, NULL);
		if (v)
			json_object_set_new(out, r.kvs[i].key + plen, v);
	}
	mer_etcd_range_clear(&r);
	return out;
}

/* Every site the broker knows of: joined (membership), reporting, or
 * listed in the federation file. */
static json_t *sites_view(struct mer_broker *b, int *rv)
{
	json_t *members = range_obj(b, "sites", rv);
	json_t *reports = members ? range_obj(b, "site-reports", rv) : NULL;
	json_t *status = reports ? range_obj(b, "site-status", rv) : NULL;
	json_t *out = json_object(), *statics = json_object();
	long long now = (long long)time(NULL);
	const char *name;
	json_t *v;
	size_t i;

	if (!status || !out || !statics) {
		json_decref(out);
		out = NULL;
		goto done;
	}
	/* The summaries the broker holds in memory are newer than etcd's by
	 * up to one flush, and their last_heartbeat is when they arrived:
	 * they win, so a site's age is exact (docs/STATE.md "Site
	 * reports"); etcd's copy serves the sites that have not reported
	 * since this broker started. */
	json_t *mem = mer_dispatch_reports(b);
	if (mem)
		json_object_update(reports, mem);
	json_decref(mem);
	pthread_rwlock_rdlock(&b->lock);
	json_array_foreach (json_object_get(b->fed_file, "sites"), i, v)
		json_object_set(
		    statics, json_string_value(json_object_get(v, "name")), v);
	pthread_rwlock_unlock(&b->lock);
	json_t *all[3] = {members, reports, statics};
	for (int k = 0; k < 3; k++)
		json_object_foreach (all[k], name, v) {
			if (json_object_get(out, name))
				continue;
			json_t *m = json_object_get(members, name);
			json_t *r = json_object_get(reports, name);
			if (!r)
				r = json_object_get(statics, name);
			json_t *st = json_object_get(status, name);
			json_t *o = json_pack("{s:s}", "name", name);
			const char *region = json_string_value(
			    json_object_get(m ? m : r, "region"));
			json_int_t hb = json_integer_value(
			    json_object_get(r, "last_heartbeat"));
			json_object_set_new(o, "region",
					    region ? json_string(region)
						   : json_null());
			json_object_set_new(
			    o, "source",
			    json_string(m ? "joined"
					  : (json_object_get(reports, name)
						 ? "report"
						 : "static")));
			json_object_set(o, "joined_at",
					m ? json_object_get(m, "joined_at")
					  : json_null());
			json_object_set_new(
			    o, "revoked",
			    json_boolean(
				json_is_true(json_object_get(m, "revoked")) ||
				json_is_true(json_object_get(st, "revoked"))));
			json_object_set_new(
			    o, "drained",
			    json_boolean(
				json_is_true(json_object_get(st, "drained"))));
			json_object_set_new(o, "lost",
					    json_boolean(json_is_true(
						json_object_get(st, "lost"))));
			json_t *health = json_object_get(r, "health");
			json_object_set_new(o, "health",
					    health ? json_incref(health)
						   : json_string("unknown"));
			json_object_set_new(o, "last_report_age_s",
					    hb ? json_integer(now - hb)
					       : json_null());
			json_object_set(o, "summary", r ? r : json_null());
			json_object_set_new(out, name, o);
		}
done:
	json_decref(members);
	json_decref(reports);
	json_decref(status);
	json_decref(statics);
	return out;
}

static int list_sites(struct mer_http_req *req, struct mer_http_res *res,
		      void *arg)
{
	struct mer_broker *b = arg;
	struct mer_principal who;
	json_t *view, *arr, *v;
	const char *name;
	int rv;

	if (auth(b, req, res, 0, &who))
		return 0;
	if (!(view = sites_view(b, &rv)))
		return etcd_fail(res, rv ? rv : MER_ENOMEM);
	arr = json_array();
	json_object_foreach (view, name, v) {
		json_t *c = json_copy(v);
		/* The list stays small: details are per site. */
		json_object_del(c, "summary");
		json_array_append_new(arr, c);
	}
	json_decref(view);
	return mer_http_res_json_new(res, 200,
				     json_pack("{s:o}", "sites", arr));
}

static int get_site(struct mer_http_req *req, struct mer_http_res *res,
		    void *arg)
{
	struct mer_broker *b = arg;
	struct mer_principal who;
	const char *name = mer_http_req_param(req, "name");
	json_t *view, *v;
	int rv;

	if (auth(b, req, res, 0, &who))
		return 0;
	if (!(view = sites_view(b, &rv)))
		return etcd_fail(res, rv ? rv : MER_ENOMEM);
	v = json_object_get(view, name);
	if (!v)
		rv = mer_http_res_error(res, 404, "not_found", "name",
					"no site %s", name);
	else
		rv = mer_http_res_json(res, 200, v);
	json_decref(view);
	return rv;
}

/* Sets one flag of a site's status record (read-modify-write guarded by
 * its mod_revision). */
int mer_broker_site_flag(struct mer_broker *b, const char *name,
			 const char *flag, int on)
{
	char key[KEY_MAX];
	long long now = (long long)time(NULL);

	if (!mer_store_key(b->store, key, sizeof(key), "site-status/%s", name))
		return MER_EINVAL;
	for (int tries = 0; tries < 8; tries++) {
		struct mer_etcd_kv kv = {0};
		json_t *o = NULL;
		int64_t mod = 0;
		int rv = mer_etcd_get(b->etcd, key, strlen(key), &kv, NULL);
		if (rv == 0) {
			o = json_loadb(kv.value, kv.value_len, 0, NULL);
			mod = kv.mod_revision;
		} else if (rv != MER_ENOTFOUND) {
			return rv;
		}
		mer_etcd_kv_clear(&kv);
		if (!o)
			o = json_object();
		json_object_set_new(o, flag, json_boolean(on));
		json_object_set_new(o, "changed_at", json_integer(now));
		char *v = mer_json_dumps(o);
		json_decref(o);
		if (!v)
			return MER_ENOMEM;
		rv = mer_etcd_put_if_mod_revision(b->etcd, key, strlen(key), v,
						  strlen(v), 0, mod, NULL);
		free(v);
		if (rv != MER_ECOMPARE)
			return rv;
	}
	return MER_EBUSY;
}

/*
 * The start of every call that changes one site: an admin caller and a
 * site the broker knows. 0 when the handler may go on; otherwise the
 * answer is set and *ret is what the handler returns.
 */
static int site_admin_call(struct mer_http_req *req, struct mer_http_res *res,
			   struct mer_broker *b, struct mer_principal *who,
			   int *ret)
{
	const char *name = mer_http_req_param(req, "name");
	json_t *view;
	int rv;

	*ret = 0;
	if (auth(b, req, res, 1, who))
		return 1;
	if (!(view = sites_view(b, &rv))) {
		*ret = etcd_fail(res, rv ? rv : MER_ENOMEM);
		return 1;
	}
	int known = json_object_get(view, name) != NULL;
	json_decref(view);
	if (!known) {
		*ret = mer_http_res_error(res, 404, "not_found", "name",
					  "no site %s", name);
		return 1;
	}
	return 0;
}

static int drain_common(struct mer_http_req *req, struct mer_http_res *res,
			struct mer_broker *b, int on)
{
	struct mer_principal who;
	const char *name = mer_http_req_param(req, "name");
	int rv;

	if (site_admin_call(req, res, b, &who, &rv))
		return rv;
	if ((rv = mer_broker_site_flag(b, name, "drained", on)))
		return etcd_fail(res, rv);
	mer_info(on ? "site drained" : "site undrained", "site=%s by=%s", name,
		 who.tenant);
	mer_broker_fed_invalidate(b);
	mer_placer_kick(b);
	return mer_http_res_json_new(
	    res, 200, json_pack("{s:s, s:b}", "name", name, "drained", on));
}

static int drain_site(struct mer_http_req *req, struct mer_http_res *res,
		      void *arg)
{
	return drain_common(req, res, arg, 1);
}

static int undrain_site(struct mer_http_req *req, struct mer_http_res *res,
			void *arg)
{
	return drain_common(req, res, arg, 0);
}

static int revoke_site(struct mer_http_req *req, struct mer_http_res *res,
		       void *arg)
{
	struct mer_broker *b = arg;
	struct mer_principal who;
	const char *name = mer_http_req_param(req, "name");
	int rv;

	if (site_admin_call(req, res, b, &who, &rv))
		return rv;
	rv = mer_membership_revoke(b->members, name);
	if (rv && rv != MER_ENOTFOUND)
		return etcd_fail(res, rv);
	/* etcd's copies went with the revoke: the snapshots' too, or a site
	 * joining again under this name would show them. */
	mer_placer_replica_forget(b, name);
	/* Sites that never joined (static, report-only) are cut off from
	 * placement by the status mark. */
	if ((rv = mer_broker_site_flag(b, name, "revoked", 1)))
		return etcd_fail(res, rv);
	if (b->link)
		mer_link_server_revoke(b->link, name);
	mer_warn("site revoked", "site=%s by=%s", name, who.tenant);
	mer_broker_fed_invalidate(b);
	mer_placer_kick(b);
	return mer_http_res_json_new(
	    res, 200, json_pack("{s:s, s:b}", "name", name, "revoked", 1));
}

/* ---- tokens ------------------------------------------------------------ */

static int post_token(struct mer_http_req *req, struct mer_http_res *res,
		      void *arg)
{
	struct mer_broker *b = arg;
	struct mer_principal who;
	json_t *body = mer_http_req_json(req);
	const char *site, *region;
	const json_t *ttl;
	int64_t ttl_ms = 3600 * 1000;
	char token[MER_TOKEN_SIZE];
	struct mer_token_info info;
	int rv;

	if (auth(b, req, res, 1, &who))
		return 0;
	site = json_string_value(json_object_get(body, "site"));
	region = json_string_value(json_object_get(body, "region"));
	ttl = json_object_get(body, "ttl");
	if (!site)
		return mer_http_res_error(res, 400, "invalid", "site",
					  "site: required string");
	if (!region)
		return mer_http_res_error(res, 400, "invalid", "region",
					  "region: required string");
	if (ttl && json_is_string(ttl)) {
		if (mer_cfg_parse_duration(json_string_value(ttl), &ttl_ms))
			return mer_http_res_error(res, 400, "invalid", "ttl",
						  "ttl: not a duration "
						  "(\"1h\", \"30m\")");
	} else if (ttl && json_is_integer(ttl)) {
		ttl_ms = json_integer_value(ttl) * 1000;
	} else if (ttl) {
		return mer_http_res_error(res, 400, "invalid", "ttl",
					  "ttl: a duration string or seconds");
	}
	const char *k;
	json_t *v;
	json_object_foreach (body, k, v) {
		if (strcmp(k, "site") && strcmp(k, "region") &&
		    strcmp(k, "ttl"))
			return mer_http_res_error(res, 400, "invalid", k,
						  "unknown key '%s'", k);
	}
	rv = mer_membership_token_create(b->members, site, region,
					 ttl_ms / 1000, token, &info);
	if (rv == MER_EINVAL)
		return mer_http_res_error(res, 400, "invalid", NULL,
					  "site must be 1..63 of a-z 0-9 -, "
					  "region non-empty, ttl 1s..30d");
	if (rv)
		return etcd_fail(res, rv);
	mer_info("join token created", "id=%s site=%s by=%s", info.id, site,
		 who.tenant);
	rv = mer_http_res_json_new(
	    res, 201,
	    json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:o}", "token", token,
		      "id", info.id, "site", info.site, "region", info.region,
		      "created_at", (json_int_t)info.created_at, "expires_at",
		      (json_int_t)info.expires_at, "broker_key",
		      b->have_key ? json_string(b->key_fp) : json_null()));
	sodium_memzero(token, sizeof(token));
	return rv;
}

/* ---- policy ------------------------------------------------------------ */

static int get_policy(struct mer_http_req *req, struct mer_http_res *res,
		      void *arg)
{
	struct mer_broker *b = arg;
	struct mer_principal who;
	const char *vs = mer_http_req_query(req, "version");
	long ver;
	int rv;

	if (auth(b, req, res, 0, &who))
		return 0;
	if (vs) {
		char key[KEY_MAX];
		struct mer_etcd_kv kv = {0};
		if (parse_uint(vs, 1, 1L << 40, &ver))
			return mer_http_res_error(res, 400, "invalid",
						  "version",
						  "version: a positive number");
		mer_store_key(b->store, key, sizeof(key),
			      "policy/versions/%010ld", ver);
		rv = mer_etcd_get(b->etcd, key, strlen(key), &kv, NULL);
		if (rv == MER_ENOTFOUND)
			return mer_http_res_error(res, 404, "not_found",
						  "version",
						  "no policy version %ld", ver);
		if (rv)
			return etcd_fail(res, rv);
		json_t *o = json_loadb(kv.value, kv.value_len, 0, NULL);
		mer_etcd_kv_clear(&kv);
		return mer_http_res_json_new(res, 200, o);
	}
	struct mer_policy_ref *p = mer_broker_policy_get(b);
	rv = mer_http_res_json_new(
	    res, 200,
	    json_pack("{s:I, s:s, s:I, s:O}", "version", (json_int_t)p->version,
		      "name", p->pol->version, "applied_at",
		      (json_int_t)p->applied_at, "policy", p->doc));
	mer_broker_policy_put(b, p);
	return rv;
}

static int put_policy(struct mer_http_req *req, struct mer_http_res *res,
		      void *arg)
{
	struct mer_broker *b = arg;
	struct mer_principal who;
	size_t len = 0;
	const char *text = mer_http_req_body(req, &len);
	char err[1024];
	int64_t ver = 0;
	int rv;

	if (auth(b, req, res, 1, &who))
		return 0;
	err[0] = 0;
	rv = mer_broker_policy_apply(b, "request body", text, len, who.tenant,
				     &ver, err, sizeof(err));
	if (rv == MER_EINVAL || rv == MER_EPARSE || rv == MER_ETOOBIG) {
		/* "request body:3:14: weights.wait: must be..." */
		const char *p = err;
		for (int colons = 0; *p && colons < 3; p++)
			if (*p == ':')
				colons++;
		while (*p == ' ')
			p++;
		char field[256];
		field_of(p, field, sizeof(field));
		return mer_http_res_error(res, 400, "invalid",
					  field[0] ? field : NULL, "%s", err);
	}
	if (rv)
		return mer_http_res_error(res, mer_http_status_for_err(rv),
					  mer_errname(rv), NULL, "%s", err);
	struct mer_policy_ref *p = mer_broker_policy_get(b);
	rv = mer_http_res_json_new(res, 200,
				   json_pack("{s:I, s:s}", "version",
					     (json_int_t)ver, "name",
					     p->pol->version));
	mer_broker_policy_put(b, p);
	return rv;
}

/* ---- health and metrics ------------------------------------------------ */

static int healthz(struct mer_http_req *req, struct mer_http_res *res,
		   void *arg)
{
	(void)req;
	(void)arg;
	return mer_http_res_json_new(res, 200,
				     json_pack("{s:s}", "status", "ok"));
}

static int readyz(struct mer_http_req *req, struct mer_http_res *res, void *arg)
{
	struct mer_broker *b = arg;
	char key[KEY_MAX];
	struct mer_etcd_kv kv = {0};
	struct mer_policy_ref *p;
	int rv;

	(void)req;
	mer_store_key(b->store, key, sizeof(key), "policy/current");
	rv = mer_etcd_get(b->etcd, key, strlen(key), &kv, NULL);
	mer_etcd_kv_clear(&kv);
	if (rv && rv != MER_ENOTFOUND)
		return mer_http_res_error(res, 503, "not_ready", NULL,
					  "etcd: %s", mer_strerror(rv));
	p = mer_broker_policy_get(b);
	int ok = p != NULL;
	mer_broker_policy_put(b, p);
	if (!ok)
		return mer_http_res_error(res, 503, "not_ready", NULL,
					  "no policy loaded");
	/* Ready means "answers requests": a follower that knows its leader
	 * is ready too (it serves reads and redirects writes). */
	struct mer_leader_view v;
	mer_leader_view(b, &v);
	if (!v.leading && !v.rest[0]) {
		mer_http_res_header(res, "Retry-After", "1");
		return mer_http_res_error(res, 503, "no_leader", NULL,
					  "no broker leads yet");
	}
	return mer_http_res_json_new(
	    res, 200,
	    json_pack("{s:s, s:s, s:b, s:I, s:s, s:s, s:s}", "status", "ready",
		      "role", v.leading ? "leader" : "follower", "leader",
		      v.leading, "epoch", (json_int_t)v.epoch, "leader_id",
		      v.id, "leader_rest", v.rest, "leader_link", v.link));
}

static int metrics(struct mer_http_req *req, struct mer_http_res *res,
		   void *arg)
{
	struct mer_broker *b = arg;
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	struct mer_store_stats ss;
	struct mer_http_stats hs;
	int rv;

	(void)req;
	if (!f)
		return MER_ENOMEM;
	mer_metrics_render(b->metrics, f);
	mer_placer_render(b, f);
	mer_store_get_stats(b->store, &ss);
	mer_metrics_header(f, "meridian_store_txns_total", "counter",
			   "Job batch txns committed.");
	mer_metrics_sample(f, "meridian_store_txns_total", "", (double)ss.txns);
	mer_metrics_header(f, "meridian_store_conflicts_total", "counter",
			   "Guarded updates retried after a concurrent write.");
	mer_metrics_sample(f, "meridian_store_conflicts_total", "",
			   (double)ss.conflicts);
	mer_metrics_header(f, "meridian_etcd_errors_total", "counter",
			   "Job batches etcd did not take.");
	mer_metrics_sample(f, "meridian_etcd_errors_total", "",
			   (double)ss.etcd_errors);
	mer_http_server_stats(b->http, &hs);
	mer_metrics_header(f, "meridian_http_queued", "gauge",
			   "Requests waiting for a worker.");
	mer_metrics_sample(f, "meridian_http_queued", "", hs.queued);
	mer_metrics_header(f, "meridian_agents_connected", "gauge",
			   "Site agents with a live link session.");
	size_t nsites = 0;
	struct mer_link_stats ls = {0};
	int64_t epoch = 0;
	int leading = mer_leader_enter(b, &epoch);
	if (leading && b->link) {
		char **names = NULL;
		if (mer_link_server_sites(b->link, &names, &nsites) == 0)
			mer_link_names_free(names, nsites);
		mer_link_server_get_stats(b->link, &ls);
	}
	if (leading)
		mer_leader_leave(b);
	mer_metrics_header(f, "meridian_leader", "gauge",
			   "1 while this broker is the leader.");
	mer_metrics_sample(f, "meridian_leader", "", leading);
	mer_metrics_header(f, "meridian_leader_epoch", "gauge",
			   "The leader term this broker holds (0: none).");
	mer_metrics_sample(f, "meridian_leader_epoch", "",
			   leading ? (double)epoch : 0);
	mer_metrics_header(f, "meridian_fenced_writes_total", "counter",
			   "etcd writes refused by the leader fence.");
	mer_metrics_sample(f, "meridian_fenced_writes_total", "",
			   (double)mer_etcd_fenced_count(b->etcd));
	mer_metrics_sample(f, "meridian_agents_connected", "", (double)nsites);
	mer_metrics_header(f, "meridian_link_rejected_total", "counter",
			   "Link messages dropped, by reason.");
	for (int r = 0; r < MER_CHAN_R_COUNT; r++) {
		char lb[96];
		snprintf(lb, sizeof(lb), "reason=\"%s\"",
			 mer_chan_reason_name(r));
		mer_metrics_sample(f, "meridian_link_rejected_total", lb,
				   (double)ls.rejected[r]);
	}
	fclose(f);
	rv = mer_http_res_text(
	    res, 200, "text/plain; version=0.0.4; charset=utf-8", buf, len);
	free(buf);
	return rv;
}

/* ---- leader only ------------------------------------------------------- */

/* A follower's answer to a write: 307 to the leader's REST URL with the
 * same path and query (the client repeats the request there), or 503
 * when no leader is known (docs/api.yaml). */
static int not_leader(struct mer_broker *b, struct mer_http_req *req,
		      struct mer_http_res *res)
{
	struct mer_leader_view v;
	char url[2048], q[1024] = "";
	size_t off = 0;

	mer_leader_view(b, &v);
	if (v.leading || !v.rest[0]) {
		mer_http_res_header(res, "Retry-After", "1");
		return mer_http_res_error(res, 503, "no_leader", NULL,
					  "no broker leads right now; retry");
	}
	for (size_t i = 0; i < mer_http_req_query_count(req); i++) {
		const char *name, *value;
		char en[256], ev[512];
		if (mer_http_req_query_at(req, i, &name, &value) != 0 ||
		    url_escape(name, en, sizeof(en)) != 0 ||
		    url_escape(value ? value : "", ev, sizeof(ev)) != 0)
			continue;
		int w = snprintf(q + off, sizeof(q) - off, "%c%s=%s",
				 off ? '&' : '?', en, ev);
		if (w < 0 || (size_t)w >= sizeof(q) - off)
			break;
		off += (size_t)w;
	}
	snprintf(url, sizeof(url), "%s%s%s", v.rest, mer_http_req_path(req), q);
	mer_http_res_header(res, "Location", url);
	return mer_http_res_json_new(
	    res, 307,
	    json_pack("{s:s, s:s, s:s}", "error", "not_leader", "leader",
		      v.rest, "message",
		      "this broker is a follower: send writes to the leader"));
}

/* Write routes run only on the leader, with its role held so that a
 * step-down waits for them (and their writes are fenced anyway). */
struct gate {
	mer_http_handler_fn fn;
};

static int leader_only(struct mer_http_req *req, struct mer_http_res *res,
		       void *arg)
{
	const struct gate *g = arg;
	struct mer_broker *b = mer_http_req_server_arg(req);
	int rv;

	if (!mer_leader_enter(b, NULL))
		return not_leader(b, req, res);
	rv = g->fn(req, res, b);
	mer_leader_leave(b);
	return rv;
}

int mer_api_register(struct mer_broker *b)
{
	static struct gate g_post_job = {post_job}, g_cancel = {cancel_job},
			   g_revoke = {revoke_site}, g_drain = {drain_site},
			   g_undrain = {undrain_site}, g_token = {post_token},
			   g_policy = {put_policy};
	const struct mer_http_route routes[] = {
	    {"GET", "/healthz", healthz, b, 0},
	    {"GET", "/readyz", readyz, b, 0},
	    {"GET", "/metrics", metrics, b, 0},
	    {"POST", "/v1/jobs", leader_only, &g_post_job, MER_HTTP_JSON_BODY},
	    {"GET", "/v1/jobs", list_jobs, b, 0},
	    {"GET", "/v1/jobs/{id}", get_job, b, 0},
	    {"DELETE", "/v1/jobs/{id}", leader_only, &g_cancel, 0},
	    {"GET", "/v1/jobs/{id}/placement", get_placement, b, 0},
	    {"POST", "/v1/placements:dry-run", dry_run, b, MER_HTTP_JSON_BODY},
	    {"GET", "/v1/sites", list_sites, b, 0},
	    {"GET", "/v1/sites/{name}", get_site, b, 0},
	    {"DELETE", "/v1/sites/{name}", leader_only, &g_revoke, 0},
	    {"POST", "/v1/sites/{name}:drain", leader_only, &g_drain, 0},
	    {"POST", "/v1/sites/{name}:undrain", leader_only, &g_undrain, 0},
	    {"POST", "/v1/tokens", leader_only, &g_token, MER_HTTP_JSON_BODY},
	    {"GET", "/v1/policy", get_policy, b, 0},
	    {"PUT", "/v1/policy", leader_only, &g_policy, MER_HTTP_JSON_BODY},
	};
	return mer_http_server_add_routes(b->http, routes,
					  sizeof(routes) / sizeof(routes[0]));
}
