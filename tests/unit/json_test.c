/* Tests for common/json: limits, syntax error positions, locating values in
 * the source text, error formatting, depth and dumps. */
#include "common/err.h"
#include "common/json.h"
#include "tests/harness.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int parse(const char *text, size_t max_bytes, size_t max_depth,
		 struct mer_json_doc *doc, char *err, size_t errlen)
{
	return mer_json_doc_parse("t.json", text, strlen(text), max_bytes,
				  max_depth, doc, err, errlen);
}

static void test_parse_ok(void)
{
	struct mer_json_doc doc;
	char err[256] = "junk";

	T_OK(parse("{\"a\": [1, 2]}", 0, 0, &doc, err, sizeof(err)));
	T_EQ_STR(err, "");
	T_EQ_STR(doc.name, "t.json");
	T_EQ_STR(doc.text, "{\"a\": [1, 2]}");
	T_EQ_INT(doc.len, 13);
	T_ASSERT(json_is_object(doc.root));
	T_EQ_INT(json_array_size(json_object_get(doc.root, "a")), 2);
	mer_json_doc_free(&doc);
	T_EXPECT(doc.root == NULL && doc.text == NULL && doc.name == NULL);
	mer_json_doc_free(&doc); /* twice is harmless */
	mer_json_doc_free(NULL);

	/* Scalars are documents too; callers check the root's type. */
	T_OK(parse(" 42 ", 0, 0, &doc, err, sizeof(err)));
	T_EQ_INT(json_integer_value(doc.root), 42);
	mer_json_doc_free(&doc);

	/* Text need not be NUL-terminated. */
	T_OK(mer_json_doc_parse(NULL, "[1]xxxx", 3, 0, 0, &doc, err,
				sizeof(err)));
	T_EQ_STR(doc.name, "(input)");
	T_EQ_STR(doc.text, "[1]");
	mer_json_doc_free(&doc);
}

static void test_size_limit(void)
{
	struct mer_json_doc doc;
	char err[256];
	const char *t = "[1, 2, 3]"; /* 9 bytes */

	T_OK(parse(t, 9, 0, &doc, err, sizeof(err)));
	mer_json_doc_free(&doc);
	T_EQ_INT(parse(t, 8, 0, &doc, err, sizeof(err)), MER_ETOOBIG);
	T_EQ_STR(err, "t.json: document is 9 bytes, over the limit of 8 bytes");
	T_EXPECT(doc.root == NULL && doc.text == NULL);
	mer_json_doc_free(&doc);
}

static void test_depth_limit(void)
{
	struct mer_json_doc doc;
	char err[256];
	char buf[300];
	size_t n = 0;

	/* 64 levels pass, 65 do not; objects count like arrays. */
	for (int i = 0; i < 63; i++)
		buf[n++] = '[';
	buf[n++] = '{';
	buf[n++] = '}';
	for (int i = 0; i < 63; i++)
		buf[n++] = ']';
	buf[n] = '\0';
	T_OK(parse(buf, 0, 0, &doc, err, sizeof(err)));
	T_EQ_INT(mer_json_depth(doc.root), 64);
	mer_json_doc_free(&doc);

	T_EQ_INT(parse("[[[{\"a\": [1]}]]]", 0, 4, &doc, err, sizeof(err)),
		 MER_ETOOBIG);
	T_EQ_STR(err, "t.json:1:10: nested deeper than 4 levels");
	T_EXPECT(doc.root == NULL);

	/* Brackets inside strings (with escaped quotes) are not nesting. */
	T_OK(parse("[\"[[[[\\\"[[[[\", \"{{{{\"]", 0, 2, &doc, err,
		   sizeof(err)));
	mer_json_doc_free(&doc);
}

static void test_depth_bomb(void)
{
	struct mer_json_doc doc;
	char err[256];
	size_t n = 4u << 20; /* the default size limit, all '[' */
	char *bomb = malloc(n + 1);
	clock_t t0;

	T_ASSERT(bomb != NULL);
	memset(bomb, '[', n);
	bomb[n] = '\0';
	t0 = clock();
	T_EQ_INT(
	    mer_json_doc_parse("bomb", bomb, n, 0, 0, &doc, err, sizeof(err)),
	    MER_ETOOBIG);
	/* Refused by the pre-scan at the 65th bracket, long before the end. */
	T_EXPECT((double)(clock() - t0) / CLOCKS_PER_SEC < 1.0);
	T_EQ_STR(err, "bomb:1:65: nested deeper than 64 levels");
	/* One byte over the size limit is refused for size first. */
	T_EQ_INT(mer_json_doc_parse("bomb", bomb, n, n - 1, 0, &doc, err,
				    sizeof(err)),
		 MER_ETOOBIG);
	T_CONTAINS(err, "over the limit of 4194303 bytes");
	free(bomb);
}

struct syntax_case {
	const char *text;
	const char *want;
};

static void test_syntax_errors(void)
{
	/* jansson puts the column at the last character of the bad token. */
	static const struct syntax_case cases[] = {
	    {"{\n  \"a\": 1,\n  \"b\": tru\n}",
	     "t.json:3:10: invalid token near 'tru'"},
	    {"{\n  \"a\": 1,\n  \"b\": x\n}",
	     "t.json:3:8: invalid token near 'x'"},
	    {"{\"a\": 1,}", "t.json:1:9: string or '}' expected near '}'"},
	    {"[1,2", "t.json:1:4: ']' expected near end of file"},
	    {"", "t.json:1:1: unexpected token near end of file"},
	    {"{\"a\": \"\xc3\xbc\" x}", "t.json:1:11: '}' expected near 'x'"},
	    {"{\"a\":1, \"a\":2}",
	     "t.json:1:11: duplicate object key near '\"a\"'"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct mer_json_doc doc;
		char err[256];
		T_EQ_INT(parse(cases[i].text, 0, 0, &doc, err, sizeof(err)),
			 MER_EPARSE);
		T_EQ_STR(err, cases[i].want);
		T_EXPECT(doc.root == NULL);
	}
}

static void test_small_err_buffer(void)
{
	struct mer_json_doc doc;
	char err[8];

	memset(err, 'x', sizeof(err));
	T_EQ_INT(parse("[1,2", 0, 0, &doc, err, sizeof(err)), MER_EPARSE);
	T_EQ_STR(err, "t.json:");
	T_EQ_INT(parse("[1,2", 0, 0, &doc, NULL, 0), MER_EPARSE);
}

/* A temporary directory removed (with its files) at the end of a case. */
struct tmpdir {
	char path[64];
};

static int tmpdir_make(struct tmpdir *d)
{
	snprintf(d->path, sizeof(d->path), "/tmp/mer_json_test.XXXXXX");
	return mkdtemp(d->path) ? 0 : -1;
}

static void tmpdir_file(const struct tmpdir *d, const char *name, char *out,
			size_t n)
{
	snprintf(out, n, "%s/%s", d->path, name);
}

static void tmpdir_remove(struct tmpdir *d, const char *const *names)
{
	char p[128];

	for (; *names; names++) {
		tmpdir_file(d, *names, p, sizeof(p));
		unlink(p);
	}
	rmdir(d->path);
}

static int write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	if (!f)
		return -1;
	fputs(text, f);
	return fclose(f);
}

static void load_cases(const struct tmpdir *d)
{
	struct mer_json_doc doc;
	char err[512], good[128], bad[128], big[128], want[256];
	int fd;

	tmpdir_file(d, "good.json", good, sizeof(good));
	tmpdir_file(d, "bad.json", bad, sizeof(bad));
	tmpdir_file(d, "big.json", big, sizeof(big));
	T_ASSERT(write_file(good, "{\"k\": [true]}\n") == 0);
	T_ASSERT(write_file(bad, "{\n\t\"k\": [true,]\n}\n") == 0);

	T_OK(mer_json_doc_load(good, 0, 0, &doc, err, sizeof(err)));
	T_EQ_STR(doc.name, good);
	T_EQ_STR(doc.text, "{\"k\": [true]}\n");
	T_EXPECT(
	    json_is_true(json_array_get(json_object_get(doc.root, "k"), 0)));
	mer_json_doc_free(&doc);

	/* The file name leads the error. */
	T_EQ_INT(mer_json_doc_load(bad, 0, 0, &doc, err, sizeof(err)),
		 MER_EPARSE);
	snprintf(want, sizeof(want), "%s:2:13: unexpected token near ']'", bad);
	T_EQ_STR(err, want);

	/* A sparse 64 MiB file is refused from its size alone. */
	fd = open(big, O_CREAT | O_WRONLY | O_TRUNC, 0600);
	T_ASSERT(fd >= 0);
	T_ASSERT(ftruncate(fd, 64 << 20) == 0);
	close(fd);
	T_EQ_INT(mer_json_doc_load(big, 0, 0, &doc, err, sizeof(err)),
		 MER_ETOOBIG);
	snprintf(want, sizeof(want),
		 "%s: file is 67108864 bytes, over the limit of 4194304 bytes",
		 big);
	T_EQ_STR(err, want);
	T_EQ_INT(mer_json_doc_load(good, 10, 0, &doc, err, sizeof(err)),
		 MER_ETOOBIG);

	T_EQ_INT(mer_json_doc_load(d->path, 0, 0, &doc, err, sizeof(err)),
		 MER_EIO);
	T_CONTAINS(err, "is a directory");
	tmpdir_file(d, "missing.json", bad, sizeof(bad));
	T_EQ_INT(mer_json_doc_load(bad, 0, 0, &doc, err, sizeof(err)), MER_EIO);
	snprintf(want, sizeof(want), "%s: No such file or directory", bad);
	T_EQ_STR(err, want);
	T_EXPECT(doc.root == NULL && doc.name == NULL);
}

static void test_load(void)
{
	static const char *const files[] = {"good.json", "bad.json", "big.json",
					    NULL};
	struct tmpdir d;

	T_ASSERT(tmpdir_make(&d) == 0);
	load_cases(&d);
	tmpdir_remove(&d, files);
	T_EXPECT(access(d.path, F_OK) != 0);
}

static void test_load_pipe(void)
{
	struct mer_json_doc doc;
	char err[256];
	int fds[2];

	/* Files without a size (pipes) are read up to the limit. */
	T_ASSERT(pipe(fds) == 0);
	T_ASSERT(write(fds[1], "[1, 2, 3, 4]", 12) == 12);
	close(fds[1]);
	char path[64];
	snprintf(path, sizeof(path), "/dev/fd/%d", fds[0]);
	T_EQ_INT(mer_json_doc_load(path, 8, 0, &doc, err, sizeof(err)),
		 MER_ETOOBIG);
	close(fds[0]);
	T_CONTAINS(err, "over the limit of 8 bytes");

	T_ASSERT(pipe(fds) == 0);
	T_ASSERT(write(fds[1], "[1, 2, 3, 4]", 12) == 12);
	close(fds[1]);
	snprintf(path, sizeof(path), "/dev/fd/%d", fds[0]);
	int rv = mer_json_doc_load(path, 0, 0, &doc, err, sizeof(err));
	close(fds[0]);
	T_OK(rv);
	T_EQ_INT(json_array_size(doc.root), 4);
	mer_json_doc_free(&doc);
}

/* Columns below count characters; line 6 holds two 2-byte characters. */
static const char locate_text[] =
    "{\n"
    "  \"name\": \"a \\\"quoted\\\" \\\\ string, with [brackets] and "
    "{braces}\",\n"
    "  \"a.b\": {\"c\": 1},\n"
    "  \"list\": [1, [2, 3], {\"x\": [4, {\"y\": \"z\"}]}],\n"
    "  \"esc\\u002eaped\": true,\n"
    "  \"\xc3\xbcn\xc3\xaf\": \"v\",\n"
    "  \"nested\": {\"deep\": {\"deeper\": [null, false]}},\n"
    "  \"empty\": {},\n"
    "  \"arr\": [],\n"
    "  \"q\\\"k\": {\"\\ud83d\\ude00\": 7}\n"
    "}\n";

struct locate_case {
	const char *path;
	int rv;
	int line, col;
};

static void test_locate(void)
{
	static const struct locate_case cases[] = {
	    {"", 0, 1, 1},
	    {"name", 0, 2, 11},
	    {"[\"a.b\"]", 0, 3, 10},
	    {"[\"a.b\"].c", 0, 3, 16},
	    {"list", 0, 4, 11},
	    {"list[0]", 0, 4, 12},
	    {"list[1]", 0, 4, 15},
	    {"list[1][1]", 0, 4, 19},
	    {"list[2]", 0, 4, 23},
	    {"list[2].x[1]", 0, 4, 33},
	    {"list[2].x[1].y", 0, 4, 39},
	    {"[\"esc.aped\"]", 0, 5, 20},
	    {"\xc3\xbcn\xc3\xaf", 0, 6, 10},
	    {"nested.deep.deeper[1]", 0, 7, 40},
	    {"nested.[\"deep\"].deeper", 0, 7, 33},
	    {"[\"q\\\"k\"]", 0, 10, 11},
	    {"[\"q\\\"k\"][\"\xf0\x9f\x98\x80\"]", 0, 10, 28},
	    /* absent: the deepest enclosing value found */
	    {"missing", MER_ENOTFOUND, 1, 1},
	    {"nested.deep.missing", MER_ENOTFOUND, 7, 22},
	    {"empty.x", MER_ENOTFOUND, 8, 12},
	    {"arr[0]", MER_ENOTFOUND, 9, 10},
	    {"list[3]", MER_ENOTFOUND, 4, 11},
	    {"name.x", MER_ENOTFOUND, 2, 11},
	    {"list.x", MER_ENOTFOUND, 4, 11},
	    {"a.b", MER_ENOTFOUND, 1, 1},
	    /* malformed paths */
	    {"a..b", MER_EINVAL, 1, 1},
	    {"list[x]", MER_EINVAL, 1, 1},
	    {"list[1", MER_EINVAL, 1, 1},
	    {"[\"unterminated", MER_EINVAL, 1, 1},
	    {"list.", MER_EINVAL, 1, 1},
	};
	struct mer_json_doc doc;
	char err[256];

	/* The fixture must be JSON jansson accepts, or the test proves
	 * nothing. */
	T_OK(parse(locate_text, 0, 0, &doc, err, sizeof(err)));
	mer_json_doc_free(&doc);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int line = -1, col = -1;
		int rv = mer_json_locate(locate_text, strlen(locate_text),
					 cases[i].path, &line, &col);
		if (rv != cases[i].rv || line != cases[i].line ||
		    col != cases[i].col)
			t_fail(__FILE__, __LINE__,
			       "path '%s': got rv=%d %d:%d, want rv=%d %d:%d",
			       cases[i].path, rv, line, col, cases[i].rv,
			       cases[i].line, cases[i].col);
	}
}

static void test_locate_edges(void)
{
	int line, col;
	const char *t = "{\"x\": {\"k\": 1}, \"k\": 2}";
	const char *crlf = "{\r\n\t\"a\": [\r\n\t\t1,\r\n\t\t2\r\n\t]\r\n}";

	/* A member of the same name deeper down is not the one asked for. */
	T_OK(mer_json_locate(t, strlen(t), "k", &line, &col));
	T_EQ_INT(line, 1);
	T_EQ_INT(col, 22);
	T_OK(mer_json_locate(t, strlen(t), "x.k", &line, &col));
	T_EQ_INT(col, 13);
	/* Tabs count as one column; CR LF ends a line once. */
	T_OK(mer_json_locate(crlf, strlen(crlf), "a[1]", &line, &col));
	T_EQ_INT(line, 4);
	T_EQ_INT(col, 3);
	/* Keys, for unknown-key errors. */
	T_OK(mer_json_locate_key(crlf, strlen(crlf), "a", &line, &col));
	T_EQ_INT(line, 2);
	T_EQ_INT(col, 2);
	T_OK(mer_json_locate_key(crlf, strlen(crlf), "a[0]", &line, &col));
	T_EQ_INT(line, 3);
	T_EQ_INT(col, 3);
	T_OK(mer_json_locate_key(t, strlen(t), "", &line, &col));
	T_EQ_INT(col, 1);
	/* Leading white space, and empty text. */
	T_OK(mer_json_locate("\n\n  [1]", 7, "[0]", &line, &col));
	T_EQ_INT(line, 3);
	T_EQ_INT(col, 4);
	T_EQ_INT(mer_json_locate("", 0, "a", &line, &col), MER_ENOTFOUND);
	T_OK(mer_json_locate(NULL, 0, "", &line, &col));
	T_EQ_INT(line, 1);
	/* Truncated text is not found rather than read past its end. */
	T_EQ_INT(mer_json_locate("{\"a\": [1, 2", 11, "a[5]", &line, &col),
		 MER_ENOTFOUND);
	T_EQ_INT(mer_json_locate("{\"a\": \"x", 8, "b", &line, &col),
		 MER_ENOTFOUND);
}

static void test_errf(void)
{
	struct mer_json_doc doc;
	char err[256];

	const char *t = "{\n  \"etcd\": {\n    \"timeout\": true\n  }\n}";

	T_OK(mer_json_doc_parse("site.json", t, strlen(t), 0, 0, &doc, err,
				sizeof(err)));
	mer_json_doc_errf(&doc, "etcd.timeout", err, sizeof(err),
			  "expected %s, got %s", "a duration", "a boolean");
	T_EQ_STR(err, "site.json:3:16: etcd.timeout: expected a duration, "
		      "got a boolean");
	mer_json_doc_key_errf(&doc, "etcd.timeout", err, sizeof(err),
			      "unknown key");
	T_EQ_STR(err, "site.json:3:5: etcd.timeout: unknown key");
	/* Absent: the enclosing object's position. */
	mer_json_doc_errf(&doc, "etcd.endpoints", err, sizeof(err),
			  "required setting is missing");
	T_EQ_STR(err, "site.json:2:11: etcd.endpoints: required setting is "
		      "missing");
	/* The root has no path prefix. */
	mer_json_doc_errf(&doc, "", err, sizeof(err), "expected an %s",
			  "array");
	T_EQ_STR(err, "site.json:1:1: expected an array");
	mer_json_doc_errf(&doc, NULL, err, sizeof(err), "x");
	T_EQ_STR(err, "site.json:1:1: x");
	/* A malformed path has no position, but the message stands. */
	mer_json_doc_errf(&doc, "a..b", err, sizeof(err), "odd");
	T_EQ_STR(err, "site.json: a..b: odd");
	/* Truncation keeps a NUL. */
	mer_json_doc_errf(&doc, "etcd.timeout", err, 12, "long message");
	T_EQ_STR(err, "site.json:3");
	mer_json_doc_free(&doc);
	/* No document at all. */
	mer_json_doc_errf(NULL, "a", err, sizeof(err), "n=%d", 3);
	T_EQ_STR(err, "(input): a: n=3");
}

static void test_depth_and_dumps(void)
{
	json_t *v =
	    json_pack("{s:i, s:[i, {s:[]}], s:{}}", "b", 1, "a", 2, "x", "c");
	T_ASSERT(v != NULL);
	T_EQ_INT(mer_json_depth(v), 4);
	char *s = mer_json_dumps(v);
	T_EQ_STR(s, "{\"a\":[2,{\"x\":[]}],\"b\":1,\"c\":{}}");
	free(s);
	json_decref(v);

	json_t *i = json_integer(5);
	T_EQ_INT(mer_json_depth(i), 0);
	s = mer_json_dumps(i);
	T_EQ_STR(s, "5");
	free(s);
	json_decref(i);
	T_EXPECT(mer_json_dumps(NULL) == NULL);
	T_EQ_INT(mer_json_depth(NULL), 0);
}

static void test_path_append(void)
{
	char p[64] = "";

	mer_json_path_append(p, sizeof(p), "etcd");
	T_EQ_STR(p, "etcd");
	mer_json_path_append(p, sizeof(p), "tls");
	T_EQ_STR(p, "etcd.tls");
	mer_json_path_append(p, sizeof(p), "a.b");
	T_EQ_STR(p, "etcd.tls[\"a.b\"]");
	mer_json_path_append(p, sizeof(p), "q\"\\");
	T_EQ_STR(p, "etcd.tls[\"a.b\"][\"q\\\"\\\\\"]");

	/* What is appended can be located again. */
	const char *t = "{\"etcd\": {\"tls\": {\"a.b\": {\"q\\\"\\\\\": 9}}}}";
	int line, col;
	T_OK(mer_json_locate(t, strlen(t), p, &line, &col));
	T_EQ_INT(col, 36);

	char small[6] = "";
	T_EQ_INT(mer_json_path_append(small, sizeof(small), "abcdefgh"), 5);
	T_EQ_STR(small, "abcde");

	p[0] = '\0';
	mer_json_path_append(p, sizeof(p), "");
	T_EQ_STR(p, "[\"\"]");
}

static void test_type_names(void)
{
	json_t *v[] = {json_object(),	json_array(),	json_string("x"),
		       json_integer(1), json_real(1.5), json_true(),
		       json_null()};
	const char *want[] = {"an object",  "an array", "a string",
			      "an integer", "a number", "a boolean",
			      "null"};
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		T_EQ_STR(mer_json_type_name(v[i]), want[i]);
		json_decref(v[i]);
	}
}

static const struct t_case cases[] = {
    {"parse_ok", test_parse_ok},
    {"size_limit", test_size_limit},
    {"depth_limit", test_depth_limit},
    {"depth_bomb", test_depth_bomb},
    {"syntax_errors", test_syntax_errors},
    {"small_err_buffer", test_small_err_buffer},
    {"load", test_load},
    {"load_pipe", test_load_pipe},
    {"locate", test_locate},
    {"locate_edges", test_locate_edges},
    {"errf", test_errf},
    {"depth_and_dumps", test_depth_and_dumps},
    {"path_append", test_path_append},
    {"type_names", test_type_names},
};

T_MAIN("json", cases)
