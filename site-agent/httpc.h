/*
 * A small JSON-over-HTTP client on libcurl for the scheduler adapters
 * (slurmrestd, the Kubernetes API server, the YARN ResourceManager): TCP or
 * a unix socket, bearer token or extra headers, CA file, a timeout, replies
 * parsed with size and depth limits. Not a general HTTP client.
 */
#ifndef MERIDIAN_AGENT_HTTPC_H
#define MERIDIAN_AGENT_HTTPC_H

#include <stddef.h>

#include <jansson.h>

#define MER_AGENT_HTTP_MAX_REPLY (64u << 20) /* big clusters list a lot */

struct mer_agent_http {
	char base[1024];     /* "http://host:port" (no trailing '/') */
	char unix_path[512]; /* "" for TCP */
	char *bearer;	     /* Authorization: Bearer (owned, wiped) */
	char *hdr[4];	     /* extra "Name: value" headers (owned, wiped) */
	size_t nhdr;
	char ca_file[1024];
	int insecure;
	long timeout_ms;
};

/*
 * Sets up h for url ("unix:///run/x.sock", "http://h:p", "https://h:p").
 * bearer may be NULL. MER_EINVAL for a URL of another kind.
 */
int mer_agent_http_init(struct mer_agent_http *h, const char *url,
			const char *bearer, const char *ca_file, int insecure,
			long timeout_ms);
/* Adds a header "Name: value" (at most 4). Values are treated as secret. */
int mer_agent_http_header(struct mer_agent_http *h, const char *name,
			  const char *value);
void mer_agent_http_clear(struct mer_agent_http *h);

/*
 * One request: method, path (with query, already encoded), body (NULL for
 * none; sent as application/json, or as content_type when given).
 * *status gets the HTTP status; *reply (may be NULL) the parsed JSON reply
 * (new reference; NULL when the body is empty). Returns 0 for 2xx;
 * MER_EUNREACHABLE (cannot connect), MER_ETIMEDOUT, MER_EREMOTE (non-2xx;
 * *reply still set when the body was JSON), MER_EPARSE (a 2xx body that is
 * not JSON), MER_ETOOBIG. err gets one line.
 */
int mer_agent_http_do(struct mer_agent_http *h, const char *method,
		      const char *path, const json_t *body,
		      const char *content_type, long *status, json_t **reply,
		      char *err, size_t errlen);

#endif
