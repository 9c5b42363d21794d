/*
 * The federation link over nng REQ/REP (docs/PROTOCOL.md): a server that
 * listens (the broker uses it) and a client that dials (each site agent).
 * Both use nng contexts and aio, seal every message with channel.h, and
 * count rejected messages by reason. The link knows sites only by name and
 * key: who is registered, what a report means and what a command does are
 * decided by the caller through the hooks below.
 */
#ifndef MERIDIAN_LINK_H
#define MERIDIAN_LINK_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "channel.h"
#include "keys.h"

#define MER_LINK_NAME_MAX 128 /* site names and regions, NUL included */

/* Counters of one server or client since it started. */
struct mer_link_stats {
	uint64_t rejected[MER_CHAN_R_COUNT]; /* by enum mer_chan_reason */
	uint64_t handshakes;		     /* sessions established */
	uint64_t handshakes_refused; /* refused (unregistered, revoked...) */
	uint64_t messages_in;	     /* sealed messages accepted */
	uint64_t messages_out;	     /* sealed messages sent */
	uint64_t reports;	     /* reports delivered / acknowledged */
	uint64_t polls;		     /* long-polls answered */
	uint64_t commands;	     /* commands sent (server) / got (client) */
	uint64_t joins;		     /* joins that succeeded */
	uint64_t joins_refused;
	uint64_t sessions; /* sessions held now (server) */
};

/* ======================= server (broker side) ======================= */

/*
 * What the broker plugs into the server. Every hook runs on an nng callback
 * thread and may block briefly (an etcd read or write, a few ms); work
 * that takes longer belongs on the broker's own threads. Hooks may call
 * mer_link_server_queue_command and the other server functions. The
 * strings and keys passed in are valid for the call only.
 */
struct mer_link_server_ops {
	/*
	 * Is pk the key of a registered site that is not revoked? 0 with the
	 * site's name in site; MER_ENOTFOUND for a key that never joined;
	 * MER_EREVOKED for a revoked one; any other code refuses the
	 * handshake with MER_EBUSY (the agent retries). Required.
	 */
	int (*check_key)(void *arg, const uint8_t pk[MER_KEY_BYTES],
			 char site[MER_LINK_NAME_MAX]);
	/*
	 * A join: token is the "<id>.<secret>" text (secret: never log it;
	 * mer_redact_token gives a loggable form), pk the joining agent's
	 * key, proven by the handshake. 0 with site and region filled once
	 * the site is recorded; otherwise the code is sent to the agent
	 * (MER_EPARSE, MER_ENOTFOUND, MER_EEXPIRED, MER_EUSED, MER_EEXIST...).
	 * NULL: joins are refused with MER_EUNSUPPORTED.
	 */
	int (*join)(void *arg, const char *token,
		    const uint8_t pk[MER_KEY_BYTES],
		    char site[MER_LINK_NAME_MAX],
		    char region[MER_LINK_NAME_MAX]);
	/*
	 * "Site S sent report R". report is borrowed (json_incref to keep
	 * it). 0 acknowledges it; another code is sent to the agent as ERROR
	 * (MER_EBUSY: it retries later). Required.
	 */
	int (*report)(void *arg, const char *site, json_t *report);
	/* "Site S wants commands": called for each long-poll before the
	 * queue is looked at (a place to refresh last-seen, or to queue a
	 * command). Optional. */
	void (*poll)(void *arg, const char *site);
	void *arg;
};

struct mer_link_server_opts {
	/* nng URL to listen on: "tcp://127.0.0.1:7400", "ipc:///path".
	 * Port 0 picks a free port (see mer_link_server_url). Required. */
	const char *url;
	/* The broker's long-term key pair (copied). Required. */
	const struct mer_keypair *key;
	/* Largest sealed payload; 0 = MER_WIRE_DEFAULT_MAX_PAYLOAD. */
	size_t max_payload;
	/* Soft re-key limits sent to agents; 0 = 3600 s and 2^20
	 * messages. Sessions end at twice these (PROTOCOL.md §6). */
	uint32_t rekey_after_s;
	uint32_t rekey_after_msgs;
	/* Longest long-poll hold; 0 = 60000 ms. */
	int poll_max_ms;
	/* Sessions idle this long are dropped; 0 = 600000 ms. */
	int idle_timeout_ms;
	/* Contexts kept receiving at once; 0 = 16. */
	int receivers;
	/* Long-polls held at once (one per site); 0 = 10000. Beyond that a
	 * poll is answered at once with no commands. */
	int max_parked;
};

struct mer_link_server;

/* Listens and starts serving. MER_EINVAL for missing options, MER_EIO when
 * the URL cannot be listened on. */
int mer_link_server_start(const struct mer_link_server_opts *opts,
			  const struct mer_link_server_ops *ops,
			  struct mer_link_server **out);

/* The URL actually listened on (with the real port when 0 was asked). */
const char *mer_link_server_url(const struct mer_link_server *srv);

/* Stops listening, answers nothing more, waits for callbacks to finish and
 * frees everything. Sessions die with it. Accepts NULL. */
void mer_link_server_stop(struct mer_link_server *srv);

/*
 * Queues a command (a JSON object with a string "id") for a site; a held
 * long-poll of that site is answered at once. Takes a new reference to cmd.
 * Commands stay queued until the agent acknowledges them (PROTOCOL.md §9).
 * MER_EINVAL for a bad command, MER_EEXIST when that id is queued already.
 * Thread-safe.
 */
int mer_link_server_queue_command(struct mer_link_server *srv, const char *site,
				  json_t *cmd);

/* Commands queued for site and not acknowledged yet. */
size_t mer_link_server_pending(struct mer_link_server *srv, const char *site);

/*
 * Names of the sites with a live confirmed session (active within the idle
 * timeout, not revoked), sorted. *names is a malloc'd array of n malloc'd
 * strings; free with mer_link_names_free.
 */
int mer_link_server_sites(struct mer_link_server *srv, char ***names,
			  size_t *n);
void mer_link_names_free(char **names, size_t n);

/*
 * Cuts a site off now: its sessions stop working (the next message gets
 * ERROR revoked and is counted), a held poll is answered with ERROR revoked
 * and its queued commands are dropped. New handshakes are up to check_key:
 * call this after the revocation is visible to check_key (etcd written),
 * so a handshake whose check started before it is refused (MER_EBUSY).
 */
int mer_link_server_revoke(struct mer_link_server *srv, const char *site);

void mer_link_server_get_stats(struct mer_link_server *srv,
			       struct mer_link_stats *out);

/* ======================= client (agent side) ======================= */

struct mer_link_client_opts {
	/* Broker URL ("tcp://broker.example:7400"). Required. */
	const char *url;
	/* This site's key pair (copied). Required. */
	const struct mer_keypair *key;
	/* Pinned broker key fingerprint "SHA256:...". Required. */
	const char *broker_fp;
	/* Largest sealed payload; 0 = MER_WIRE_DEFAULT_MAX_PAYLOAD. */
	size_t max_payload;
	/* One exchange (not counting a poll's wait); 0 = 10000 ms. */
	int request_timeout_ms;
	/* Reports the outbox holds; 0 = 10000. */
	int outbox_max;
	/* Outbox retry back-off; 0 = 100 and 5000 ms. */
	int retry_min_ms;
	int retry_max_ms;
};

struct mer_link_client;

/* Creates a client and starts dialing in the background (no handshake
 * yet: the first exchange does it). All client calls are thread-safe, and
 * several may be in flight at once (a report and a poll). */
int mer_link_client_open(const struct mer_link_client_opts *opts,
			 struct mer_link_client **out);

/* Stops the outbox (unsent reports are dropped: flush first), closes the
 * socket, waits for calls in flight in other threads to return (they fail
 * with MER_ECLOSED or a transport error) and frees. No call may start once
 * close has returned. Accepts NULL. */
void mer_link_client_close(struct mer_link_client *c);

/*
 * Sends one report and waits for its acknowledgement: 0, or the broker's
 * ERROR code, MER_ETIMEDOUT, MER_EUNREACHABLE (connection reset),
 * MER_EREVOKED (this site was revoked: stop), MER_EAUTH (key not
 * registered, or the broker's key does not match the pin). A plaintext
 * NOTICE, whatever code it carries, gives MER_EBUSY: it is unauthenticated.
 * Handshakes (and re-keys, and handshakes again after "unknown session")
 * happen inside. timeout_ms bounds each exchange (0 = the option).
 */
int mer_link_client_report(struct mer_link_client *c, const json_t *report,
			   int timeout_ms);

/*
 * Queues a report (steals the reference) in the outbox, whose thread sends
 * reports in order, one at a time, retrying failures with back-off across
 * reconnects, broker restarts and re-keys until each is acknowledged.
 * Reports the broker refuses with a non-transient sealed ERROR (MER_EPARSE,
 * MER_EINVAL, MER_EPROTO, MER_ETOOBIG), or that exceed max_payload, are
 * dropped and logged; NOTICEs and replies that do not authenticate never
 * drop a report. MER_EBUSY when the outbox
 * is full, MER_EREVOKED after revocation.
 */
int mer_link_client_enqueue(struct mer_link_client *c, json_t *report);

/* Waits until the outbox is empty: 0, or MER_ETIMEDOUT. */
int mer_link_client_flush(struct mer_link_client *c, int timeout_ms);

/* Reports waiting in the outbox (including one being sent). */
size_t mer_link_client_queued(struct mer_link_client *c);

/*
 * Long-polls for commands: waits up to wait_ms for the broker to have some.
 * *commands gets a JSON array (new reference; may be empty). The commands
 * are acknowledged by the next call, so the caller must have taken them in
 * hand by then. Only one poll at a time per client.
 */
int mer_link_client_poll(struct mer_link_client *c, int wait_ms,
			 json_t **commands);

void mer_link_client_get_stats(struct mer_link_client *c,
			       struct mer_link_stats *out);

/*
 * Joins the federation: handshakes in join mode with opts->key (the new
 * site key, already saved by the caller), pinning opts->broker_fp, and sends
 * the token. 0 with the site name and region the broker recorded; otherwise
 * the broker's code (MER_EPARSE malformed, MER_ENOTFOUND unknown,
 * MER_EEXPIRED, MER_EUSED, MER_EEXIST), MER_EAUTH for a broker key that does
 * not match, or a transport error. The token is never logged.
 */
int mer_link_join(const struct mer_link_client_opts *opts, const char *token,
		  char site[MER_LINK_NAME_MAX], char region[MER_LINK_NAME_MAX]);

#endif
