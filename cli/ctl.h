/*
 * meridianctl, the operator's and tenant's command line (docs/CLI.md): the
 * command table, argument parsing, the commands and their output. main.c
 * only calls mer_ctl_main; tests call it and the renderers directly.
 */
#ifndef MERIDIAN_CLI_CTL_H
#define MERIDIAN_CLI_CTL_H

#include <stddef.h>
#include <stdio.h>
#include <jansson.h>

/* Exit codes (also in --help and docs/CLI.md). Unlike the rest of
 * Meridian these are process statuses, not enum mer_err values. */
enum mer_ctl_exit {
	MER_CTL_OK = 0,
	MER_CTL_EXIT_OTHER = 1,	      /* local trouble: memory, output */
	MER_CTL_EXIT_USAGE = 2,	      /* bad command line */
	MER_CTL_EXIT_INVALID = 3,     /* bad job/policy file, 400/409/413/422 */
	MER_CTL_EXIT_AUTH = 4,	      /* 401, 403: token missing, wrong, role */
	MER_CTL_EXIT_NOTFOUND = 5,    /* 404 */
	MER_CTL_EXIT_SERVER = 6,      /* 5xx or an answer that makes no sense */
	MER_CTL_EXIT_UNREACHABLE = 7, /* no answer: connect, TLS, timeout */
	MER_CTL_EXIT_JOB = 8	      /* --wait: the job did not succeed */
};

/* Runs one command line (argv[0] is the program). Output for people or
 * scripts goes to out, progress of --wait in JSON mode and errors (one
 * line each) to err. The environment gives MERIDIAN_URL, MERIDIAN_TOKEN,
 * MERIDIAN_CA_FILE and MERIDIAN_LINK. Returns an enum mer_ctl_exit. */
int mer_ctl_main(int argc, char **argv, FILE *out, FILE *err);

/* The exit code for an HTTP status (2xx: MER_CTL_OK). */
int mer_ctl_exit_for_status(long status);

/* Renderers behind the tables, for tests. now is unix seconds. */
void mer_ctl_print_sites(FILE *out, const json_t *sites, long long now);
void mer_ctl_print_placement(FILE *out, const json_t *placement);
void mer_ctl_print_job(FILE *out, const json_t *job, long long now);

/*
 * The line a site admin runs: "meridian-agent join --broker LINK --token T
 * --broker-key FP --config CONFIG". Values with characters a shell would
 * read are single-quoted. MER_ETOOBIG when out is too small.
 */
int mer_ctl_join_command(const char *link, const char *token,
			 const char *broker_key, const char *config, char *out,
			 size_t n);

/* The agent link address to offer when none is given: the host of the
 * REST URL with the broker's default link port ("tcp://HOST:7400"). */
int mer_ctl_default_link(const char *rest_url, char *out, size_t n);

#endif
