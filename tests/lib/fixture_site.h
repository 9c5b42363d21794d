/*
 * Fixture scheduler servers for the adapter tests (a Kubernetes API server,
 * a YARN ResourceManager, slurmrestd over HTTP): JSON bodies from
 * tests/fixtures/, a log of the requests the fixture received, and a
 * loopback server with a temp dir and an agent config pointed at it. For
 * tests only; what each fixture answers stays in its test.
 */
#ifndef MERIDIAN_TESTS_FIXTURE_SITE_H
#define MERIDIAN_TESTS_FIXTURE_SITE_H

#include <jansson.h>
#include <pthread.h>
#include <stddef.h>

#include "common/http.h"
#include "site-agent/config.h"

/* tests/fixtures/<rel> under $MERIDIAN_TOP (or the current folder), as a
 * new reference; NULL, with the reason on stderr, when it cannot be read
 * or parsed. */
json_t *t_fixture_json(const char *rel);

/* The requests a fixture server received, in order. Handlers run on the
 * server's threads, the checks on the test's: hence the lock. */
struct t_reqlog {
	pthread_mutex_t lock;
	json_t *reqs; /* [{method, path, query: {name: value}, body[, auth]}] */
};
#define T_REQLOG_INITIALIZER                                                   \
	{                                                                      \
		PTHREAD_MUTEX_INITIALIZER, NULL                                \
	}

/* Empties the log (ready for a new server). */
void t_reqlog_reset(struct t_reqlog *l);
/* Frees what the log holds; it can be reset and used again. */
void t_reqlog_free(struct t_reqlog *l);

/* Records req; when auth_header is not NULL, that header's value (or "")
 * is kept too, as "auth". */
void t_reqlog_add(struct t_reqlog *l, struct mer_http_req *req,
		  const char *auth_header);

enum t_path_match {
	T_PATH_IS,  /* the path equals the one given */
	T_PATH_HAS, /* the path contains the one given */
};

/* The last request with this method whose path matches, as a new
 * reference; NULL when there is none. */
json_t *t_reqlog_last(struct t_reqlog *l, const char *method, const char *path,
		      enum t_path_match how);
/* The body of that request parsed as JSON (new reference); NULL when no
 * request matched or its body is not JSON. */
json_t *t_reqlog_last_body(struct t_reqlog *l, const char *method,
			   const char *path, enum t_path_match how);

/* A fixture server on 127.0.0.1 (a port picked at run time), a temp dir
 * for the agent's files and the agent config that points at both. */
struct t_fxsite {
	struct mer_http_server *srv;
	struct mer_agent_cfg cfg;
	char *dir;
	int have_cfg;
};

/* Makes the temp dir (meridian-<tag>-*) and starts the server with the
 * routes. On failure what was made is undone (s is left stopped). */
int t_fxsite_start(struct t_fxsite *s, const char *tag,
		   const struct mer_http_route *routes, size_t nroutes);

/* The server's port (for the config text). */
int t_fxsite_port(const struct t_fxsite *s);

/* Loads s->cfg from the config text fmt (printf-style: the caller passes
 * t_fxsite_port(s) and s->dir where its text wants them). The loader's
 * error goes to stderr. MER_ETOOBIG when the text does not fit. */
int t_fxsite_cfg(struct t_fxsite *s, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Stops the server, frees the config, removes the temp dir. Safe to call
 * again, and on a site whose start failed. */
void t_fxsite_stop(struct t_fxsite *s);

#endif
