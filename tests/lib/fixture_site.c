/*
 * Fixture scheduler servers for adapter tests (tests/lib/fixture_site.h):
 * fixture files, the request log and the server/config/temp-dir triple.
 * Not a scheduler: what a fixture answers is written in its test.
 */
#include "tests/lib/fixture_site.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/json.h"
#include "tests/lib/proc.h"

json_t *t_fixture_json(const char *rel)
{
	char path[1024], err[512];
	const char *top = getenv("MERIDIAN_TOP");
	struct mer_json_doc doc = {0};
	json_t *r;

	snprintf(path, sizeof(path), "%s/tests/fixtures/%s",
		 top && *top ? top : ".", rel);
	if (mer_json_doc_load(path, 0, 0, &doc, err, sizeof(err))) {
		fprintf(stderr, "%s\n", err);
		return NULL;
	}
	r = json_incref(doc.root);
	mer_json_doc_free(&doc);
	return r;
}

void t_reqlog_reset(struct t_reqlog *l)
{
	pthread_mutex_lock(&l->lock);
	json_decref(l->reqs);
	l->reqs = json_array();
	pthread_mutex_unlock(&l->lock);
}

void t_reqlog_free(struct t_reqlog *l)
{
	pthread_mutex_lock(&l->lock);
	json_decref(l->reqs);
	l->reqs = NULL;
	pthread_mutex_unlock(&l->lock);
}

void t_reqlog_add(struct t_reqlog *l, struct mer_http_req *req,
		  const char *auth_header)
{
	size_t len = 0;
	const char *body = mer_http_req_body(req, &len);
	json_t *q = json_object(), *rec;

	for (size_t i = 0; i < mer_http_req_query_count(req); i++) {
		const char *n, *v;
		if (mer_http_req_query_at(req, i, &n, &v) == 0)
			json_object_set_new(q, n, json_string(v));
	}
	rec =
	    json_pack("{s:s, s:s, s:o, s:s#}", "method",
		      mer_http_req_method(req), "path", mer_http_req_path(req),
		      "query", q, "body", body ? body : "", body ? len : 0);
	if (rec && auth_header) {
		const char *a = mer_http_req_header(req, auth_header);
		json_object_set_new(rec, "auth", json_string(a ? a : ""));
	}
	pthread_mutex_lock(&l->lock);
	json_array_append_new(l->reqs, rec);
	pthread_mutex_unlock(&l->lock);
}

json_t *t_reqlog_last(struct t_reqlog *l, const char *method, const char *path,
		      enum t_path_match how)
{
	json_t *r, *found = NULL;
	size_t i;

	pthread_mutex_lock(&l->lock);
	json_array_foreach (l->reqs, i, r) {
		const char *m = json_string_value(json_object_get(r, "method"));
		const char *p = json_string_value(json_object_get(r, "path"));
		if (!m || !p || strcmp(m, method) != 0)
			continue;
		if (how == T_PATH_IS ? strcmp(p, path) == 0
				     : strstr(p, path) != NULL)
			found = r;
	}
	json_incref(found);
	pthread_mutex_unlock(&l->lock);
	return found;
}

json_t *t_reqlog_last_body(struct t_reqlog *l, const char *method,
			   const char *path, enum t_path_match how)
{
	json_t *rec = t_reqlog_last(l, method, path, how), *b;

	if (!rec)
		return NULL;
	b = json_loads(json_string_value(json_object_get(rec, "body")), 0,
		       NULL);
	json_decref(rec);
	return b;
}

int t_fxsite_start(struct t_fxsite *s, const char *tag,
		   const struct mer_http_route *routes, size_t nroutes)
{
	struct mer_http_config hc = {.url = "http://127.0.0.1:0"};
	char err[512];
	int rv;

	memset(s, 0, sizeof(*s));
	if ((rv = t_tmpdir(tag, &s->dir)) ||
	    (rv = mer_http_server_new(&hc, &s->srv, err, sizeof(err))) ||
	    (rv = mer_http_server_add_routes(s->srv, routes, nroutes)) ||
	    (rv = mer_http_server_start(s->srv))) {
		fprintf(stderr, "fixture %s: %s\n", tag, mer_strerror(rv));
		t_fxsite_stop(s);
		return rv;
	}
	return 0;
}

int t_fxsite_port(const struct t_fxsite *s)
{
	return mer_http_server_port(s->srv);
}

int t_fxsite_cfg(struct t_fxsite *s, const char *name, const char *fmt, ...)
{
	char text[4096], err[512];
	va_list ap;
	int n, rv;

	va_start(ap, fmt);
	n = vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(text))
		return MER_ETOOBIG;
	rv = mer_agent_cfg_load_string(name, text, &s->cfg, err, sizeof(err));
	if (rv) {
		fprintf(stderr, "%s\n", err);
		return rv;
	}
	s->have_cfg = 1;
	return 0;
}

void t_fxsite_stop(struct t_fxsite *s)
{
	mer_http_server_free(s->srv);
	s->srv = NULL;
	if (s->have_cfg)
		mer_agent_cfg_free(&s->cfg);
	memset(&s->cfg, 0, sizeof(s->cfg));
	s->have_cfg = 0;
	t_rmtree(s->dir);
	free(s->dir);
	s->dir = NULL;
}
