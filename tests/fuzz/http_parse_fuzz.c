/*
 * libFuzzer harness for the request side of common/http.c: one input is
 * the byte stream of one connection (any number of pipelined requests),
 * driven through the real state machine (head parser, routing, bodies,
 * JSON, answers) on a socketpair, with the worker step run inline. Not a
 * test of timeouts, TLS or threads; not part of `make test` (see README).
 */
#include "common/http.c"

#include <stdint.h>

static struct mer_http_server *fz_srv;

/* Touches everything a handler can read, so the parser's output is used. */
static int fz_handler(struct mer_http_req *req, struct mer_http_res *res,
		      void *arg)
{
	const char *name, *value, *id = mer_http_req_param(req, "id");
	size_t len = 0, n = mer_http_req_query_count(req);
	unsigned long sum = 0;
	const char *body = mer_http_req_body(req, &len);

	(void)arg;
	for (size_t i = 0; i < n; i++)
		if (mer_http_req_query_at(req, i, &name, &value) == 0)
			sum += strlen(name) + strlen(value);
	for (size_t i = 0; i < len; i++)
		sum += (unsigned char)body[i];
	if (mer_http_req_header(req, "Authorization"))
		sum++;
	if (id && strcmp(id, "fail") == 0)
		return mer_http_res_fail(res, MER_EINVAL, "id", "bad id %s",
					 id);
	if (id && strcmp(id, "none") == 0)
		return 0;
	mer_http_res_header(res, "X-Sum", "1");
	return mer_http_res_json_new(res, 200,
				     json_pack("{s:s, s:s?, s:O?, s:i}", "path",
					       mer_http_req_path(req), "id", id,
					       "json", mer_http_req_json(req),
					       "sum", (int)(sum & 0xffff)));
}

static const struct mer_http_route fz_routes[] = {
    {"GET", "/healthz", fz_handler, NULL, 0},
    {"GET", "/v1/jobs", fz_handler, NULL, 0},
    {"POST", "/v1/jobs", fz_handler, NULL, MER_HTTP_JSON_BODY},
    {"GET", "/v1/jobs/{id}", fz_handler, NULL, 0},
    {"DELETE", "/v1/jobs/{id}", fz_handler, NULL, 0},
    {"POST", "/v1/sites/{id}:drain", fz_handler, NULL, 0},
    {"POST", "/v1/placements:dry-run", fz_handler, NULL,
     MER_HTTP_JSON_OPTIONAL},
};

static void fz_init(void)
{
	struct mer_http_config cfg;

	mer_log_set_level(MER_LOG_ERROR);
	memset(&cfg, 0, sizeof(cfg));
	cfg.url = "http://127.0.0.1:0";
	cfg.workers = 1;
	cfg.max_queue = 4;
	cfg.max_body = 4096;
	cfg.max_json_depth = 8;
	cfg.max_header_bytes = 1024;
	cfg.max_headers = 16;
	if (mer_http_server_new(&cfg, &fz_srv, NULL, 0) != 0 ||
	    mer_http_server_add_routes(
		fz_srv, fz_routes, sizeof(fz_routes) / sizeof(fz_routes[0])) !=
		0)
		abort();
	/* Not started (no threads, no listener): job_enqueue() queues and
	 * the loop below plays the worker. */
	fz_srv->state = S_STARTED;
}

/* Reads and checks what the server wrote: every answer starts a status
 * line. */
static void fz_drain(int fd, bool *first)
{
	char tmp[16384];
	ssize_t r;

	while ((r = recv(fd, tmp, sizeof(tmp), MSG_DONTWAIT)) > 0) {
		if (*first && (r < 9 || memcmp(tmp, "HTTP/1.1 ", 9) != 0))
			abort();
		*first = false;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mer_http_server *srv;
	struct conn *c;
	bool first = true;
	int sv[2];
	size_t off = 0;

	if (!fz_srv)
		fz_init();
	srv = fz_srv;
	if (size > 65536)
		return 0;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
		       sv) != 0)
		abort();
	while (off < size) {
		ssize_t w = send(sv[1], data + off, size - off, MSG_NOSIGNAL);

		if (w <= 0)
			break; /* buffer full: the rest is cut off */
		off += (size_t)w;
	}
	shutdown(sv[1], SHUT_WR);
	c = calloc(1, sizeof(*c));
	if (!c)
		abort();
	c->kind = EV_CONN;
	c->srv = srv;
	c->fd = sv[0];
	c->state = C_HEAD;
	c->next = srv->conns;
	if (srv->conns)
		srv->conns->prev = c;
	srv->conns = c;
	srv->nconns++;
	srv->now = mono_ms();
	for (int i = 0; i < 100000 && !c->closed; i++) {
		conn_run(c);
		fz_drain(sv[1], &first);
		if (c->closed)
			break;
		srv->ready = NULL; /* ran out of steps: just run again */
		c->ready = false;
		c->rnext = NULL;
		if (c->state == C_WORK && srv->qhead) {
			struct http_job *job = srv->qhead;

			srv->qhead = job->next;
			if (!srv->qhead)
				srv->qtail = NULL;
			srv->queued--;
			job->in_queue = false;
			job_run(job);
			job->conn = NULL;
			conn_answer(c, job);
		}
	}
	if (!c->closed)
		conn_close(c);
	zombies_free(srv);
	close(sv[1]);
	return 0;
}
