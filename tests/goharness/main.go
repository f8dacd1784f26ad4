// Command estargz-go drives the Go reference implementation of eStargz
// (github.com/containerd/stargz-snapshotter/estargz, as packaged by Debian:
// version 0.12.0) so that the Python package's tests and benchmarks can
// compare their output against it.
//
// Subcommands (flags must come before positional arguments):
//
//	convert [-level N] [-chunk-size N] [-prioritized FILE] [-allow-missing] [-workers N] IN OUT
//	verify  [-toc-digest D] BLOB
//	toc     BLOB
//	cat     BLOB PATH
//	ls      BLOB
//
// On success each subcommand except cat and toc prints exactly one JSON
// object (one line) on stdout; toc prints the raw TOC JSON bytes as stored
// in the blob; cat prints the file's bytes. On failure a one-line message
// goes to stderr and the exit status is 1. Usage errors exit with 2.
package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func usagef(format string, a ...interface{}) error {
	return usageError{fmt.Sprintf(format, a...)}
}

const usageText = "usage: estargz-go convert [-level N] [-chunk-size N] [-prioritized FILE] [-allow-missing] [-workers N] IN OUT | verify [-toc-digest D] BLOB | toc BLOB | cat BLOB PATH | ls BLOB"

func main() {
	os.Exit(run(os.Args[1:]))
}

// run dispatches to a subcommand and turns errors and panics into a single
// stderr line plus an exit status.
func run(args []string) (code int) {
	defer func() {
		if p := recover(); p != nil {
			fail(fmt.Errorf("panic: %v", p))
			code = 1
		}
	}()
	if len(args) < 1 {
		fail(usagef("%s", usageText))
		return 2
	}
	var err error
	switch args[0] {
	case "convert":
		err = cmdConvert(args[1:])
	case "verify":
		err = cmdVerify(args[1:])
	case "toc":
		err = cmdTOC(args[1:])
	case "cat":
		err = cmdCat(args[1:])
	case "ls":
		err = cmdLs(args[1:])
	case "read-latency":
		err = cmdReadLatency(args[1:])
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(os.Stdout, usageText)
		return 0
	default:
		err = usagef("unknown subcommand %q; %s", args[0], usageText)
	}
	if err != nil {
		fail(err)
		var u usageError
		if errors.As(err, &u) {
			return 2
		}
		return 1
	}
	return 0
}

// fail prints err on one line to stderr.
func fail(err error) {
	msg := err.Error()
	msg = strings.ReplaceAll(msg, "\r", `\r`)
	msg = strings.ReplaceAll(msg, "\n", `\n`)
	fmt.Fprintln(os.Stderr, "estargz-go: "+msg)
}

// printJSON writes v as one compact JSON line on stdout.
func printJSON(v interface{}) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil { // Encode appends '\n'
		return err
	}
	_, err := os.Stdout.Write(buf.Bytes())
	return err
}

func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

func parseFlags(fs *flag.FlagSet, args []string, nargs int, argsDesc string) ([]string, error) {
	if err := fs.Parse(args); err != nil {
		return nil, usagef("%s: %v", fs.Name(), err)
	}
	if fs.NArg() != nargs {
		return nil, usagef("%s: want %d positional argument(s) (%s), got %d", fs.Name(), nargs, argsDesc, fs.NArg())
	}
	return fs.Args(), nil
}

func openSection(path string) (*os.File, *io.SectionReader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("%s: not a regular file", path)
	}
	return f, io.NewSectionReader(f, 0, st.Size()), nil
}

// ---------------------------------------------------------------- convert

type convertResult struct {
	TOCDigest        string  `json:"tocDigest"`
	DiffID           string  `json:"diffID"`
	BlobDigest       string  `json:"blobDigest"`
	BlobSize         int64   `json:"blobSize"`
	UncompressedSize int64   `json:"uncompressedSize"`
	Seconds          float64 `json:"seconds"`
}

func readPrioritized(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var files []string
	for _, line := range strings.Split(string(data), "\n") {
		if line == "" {
			continue // blank lines (and the final newline) carry no path
		}
		files = append(files, line)
	}
	return files, nil
}

func cmdConvert(args []string) error {
	fs := newFlagSet("convert")
	level := fs.Int("level", gzip.BestCompression, "gzip compression level")
	chunkSize := fs.Int("chunk-size", 0, "chunk size in bytes (0 = Go default, 4 MiB)")
	prioritized := fs.String("prioritized", "", "file with one prioritized path per line")
	allowMissing := fs.Bool("allow-missing", false, "allow prioritized paths that are not in the input")
	workers := fs.Int("workers", 0, "number of parallel writers (0 = GOMAXPROCS default)")
	pos, err := parseFlags(fs, args, 2, "IN OUT")
	if err != nil {
		return err
	}
	in, out := pos[0], pos[1]
	if *workers < 0 {
		return usagef("convert: -workers must be >= 0")
	}

	// stargz-snapshotter 0.12 has no WithParallelism option: Build splits the
	// input into runtime.GOMAXPROCS(0) parts, so -workers sets GOMAXPROCS.
	if *workers > 0 {
		runtime.GOMAXPROCS(*workers)
	}

	opts := []estargz.Option{
		estargz.WithCompressionLevel(*level),
		estargz.WithChunkSize(*chunkSize),
	}
	if *prioritized != "" {
		files, err := readPrioritized(*prioritized)
		if err != nil {
			return fmt.Errorf("reading prioritized list: %w", err)
		}
		opts = append(opts, estargz.WithPrioritizedFiles(files))
	}
	var missed []string
	if *allowMissing {
		opts = append(opts, estargz.WithAllowPrioritizeNotFound(&missed))
	}

	inF, inSR, err := openSection(in)
	if err != nil {
		return err
	}
	defer inF.Close()

	start := time.Now()
	blob, err := estargz.Build(inSR, opts...)
	if err != nil {
		return fmt.Errorf("estargz.Build: %w", err)
	}
	blobDigest, blobSize, err := writeAtomically(out, blob)
	if cerr := blob.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("closing blob: %w", cerr)
	}
	if err != nil {
		return err
	}
	elapsed := time.Since(start).Seconds()

	for _, m := range missed {
		fmt.Fprintf(os.Stderr, "estargz-go: note: prioritized path not found: %q\n", m)
	}

	usize, err := uncompressedSize(out)
	if err != nil {
		return fmt.Errorf("measuring uncompressed size of %s: %w", out, err)
	}
	return printJSON(convertResult{
		TOCDigest:        blob.TOCDigest().String(),
		DiffID:           blob.DiffID().String(),
		BlobDigest:       blobDigest,
		BlobSize:         blobSize,
		UncompressedSize: usize,
		Seconds:          elapsed,
	})
}

// writeAtomically copies r into a temporary file next to out and renames it
// over out, returning the sha256 digest and size of what was written.
func writeAtomically(out string, r io.Reader) (string, int64, error) {
	dir, base := filepath.Split(out)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return "", 0, err
	}
	tmpName := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	h := sha256.New()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	n, err := io.Copy(io.MultiWriter(bw, h), r)
	if err != nil {
		return "", 0, fmt.Errorf("writing blob: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return "", 0, err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return "", 0, err
	}
	if err := tmp.Close(); err != nil {
		return "", 0, err
	}
	if err := os.Rename(tmpName, out); err != nil {
		return "", 0, err
	}
	ok = true
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), n, nil
}

type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}

// uncompressedSize decompresses the whole blob (all gzip members) and counts
// the bytes.
func uncompressedSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		return 0, err
	}
	defer zr.Close()
	var c countingWriter
	if _, err := io.Copy(&c, zr); err != nil {
		return 0, err
	}
	return c.n, nil
}

// ---------------------------------------------------------------- raw TOC

// readRawTOC returns the TOC JSON bytes exactly as stored in the blob: the
// payload of the stargz.index.json tar entry inside the gzip member that the
// footer points to.
func readRawTOC(sr *io.SectionReader) ([]byte, error) {
	tocOff, footerSize, err := estargz.OpenFooter(sr)
	if err != nil {
		return nil, fmt.Errorf("parsing footer: %w", err)
	}
	tocLen := sr.Size() - tocOff - footerSize
	if tocOff < 0 || tocLen <= 0 {
		return nil, fmt.Errorf("footer TOC offset %d out of range for blob of %d bytes", tocOff, sr.Size())
	}
	// Both gzip decompressors of 0.12 share the same TOC member parser.
	var d interface {
		DecompressTOC(io.Reader) (io.ReadCloser, error)
	}
	if footerSize == estargz.FooterSize {
		d = new(estargz.GzipDecompressor)
	} else {
		d = new(estargz.LegacyGzipDecompressor)
	}
	rc, err := d.DecompressTOC(io.NewSectionReader(sr, tocOff, tocLen))
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("reading TOC JSON: %w", err)
	}
	return b, nil
}

func cmdTOC(args []string) error {
	pos, err := parseFlags(newFlagSet("toc"), args, 1, "BLOB")
	if err != nil {
		return err
	}
	f, sr, err := openSection(pos[0])
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := readRawTOC(sr)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(b)
	return err
}

// ---------------------------------------------------------------- tree walk

type node struct {
	path string // cleaned path as seen in the Reader's tree ("" = root)
	ent  *estargz.TOCEntry
}

// walk visits the Reader's tree from the root in depth-first pre-order,
// children sorted by name. Directories reached twice (a hardlink to a
// directory) are listed but not descended into again.
func walk(r *estargz.Reader, visit func(n node) error) error {
	root, ok := r.Lookup("")
	if !ok {
		return nil
	}
	seenDir := map[*estargz.TOCEntry]bool{}
	var rec func(p string, e *estargz.TOCEntry) error
	rec = func(p string, e *estargz.TOCEntry) error {
		if err := visit(node{path: p, ent: e}); err != nil {
			return err
		}
		if e.Type != "dir" || seenDir[e] {
			return nil
		}
		seenDir[e] = true
		var names []string
		e.ForeachChild(func(base string, _ *estargz.TOCEntry) bool {
			names = append(names, base)
			return true
		})
		sort.Strings(names)
		for _, base := range names {
			c, _ := e.LookupChild(base)
			cp := base
			if p != "" {
				cp = p + "/" + base
			}
			if err := rec(cp, c); err != nil {
				return err
			}
		}
		return nil
	}
	return rec("", root)
}

// forEachChunk reads the regular file e (as returned by the Reader, i.e. a
// hardlink already resolved to its target) chunk by chunk through the Reader
// and calls fn with each chunk's TOC entry and bytes.
func forEachChunk(r *estargz.Reader, e *estargz.TOCEntry, fn func(ce *estargz.TOCEntry, data []byte) error) error {
	// Chunks are indexed by the target's own (cleaned) name, not by the name
	// of a hardlink pointing at it.
	name := e.Name
	sr, err := r.OpenFile(name)
	if err != nil {
		return err
	}
	var buf []byte
	var off int64
	for off < e.Size {
		ce, ok := r.ChunkEntryForOffset(name, off)
		if !ok {
			return fmt.Errorf("%q: no chunk for file offset %d", name, off)
		}
		if ce.ChunkOffset != off {
			return fmt.Errorf("%q: chunk for file offset %d starts at %d", name, off, ce.ChunkOffset)
		}
		size := ce.ChunkSize
		if size <= 0 || off+size > e.Size {
			return fmt.Errorf("%q: chunk at file offset %d has bad size %d (file size %d)", name, off, size, e.Size)
		}
		if int64(cap(buf)) < size {
			buf = make([]byte, size)
		}
		data := buf[:size]
		n, err := sr.ReadAt(data, off)
		if int64(n) != size {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("%q: reading chunk at file offset %d (blob offset %d, %d bytes): %v", name, off, ce.Offset, size, err)
		}
		if err := fn(ce, data); err != nil {
			return err
		}
		off += size
	}
	return nil
}

// ---------------------------------------------------------------- verify

type verifyResult struct {
	OK           bool    `json:"ok"`
	TOCDigest    string  `json:"tocDigest"`
	Entries      int     `json:"entries"`
	RegularFiles int     `json:"regularFiles"`
	Chunks       int     `json:"chunks"`
	Bytes        int64   `json:"bytes"`
	Seconds      float64 `json:"seconds"`
}

func cmdVerify(args []string) error {
	fs := newFlagSet("verify")
	tocDigest := fs.String("toc-digest", "", "expected TOC digest (default: the digest Go computes)")
	pos, err := parseFlags(fs, args, 1, "BLOB")
	if err != nil {
		return err
	}
	f, sr, err := openSection(pos[0])
	if err != nil {
		return err
	}
	defer f.Close()

	start := time.Now()
	r, err := estargz.Open(sr)
	if err != nil {
		return fmt.Errorf("estargz.Open: %w", err)
	}
	want := r.TOCDigest()
	if *tocDigest != "" {
		want = digest.Digest(*tocDigest)
	}
	v, err := r.VerifyTOC(want)
	if err != nil {
		return fmt.Errorf("VerifyTOC: %w", err)
	}

	res := verifyResult{OK: true, TOCDigest: r.TOCDigest().String()}
	seenFile := map[*estargz.TOCEntry]bool{}
	err = walk(r, func(n node) error {
		e := n.ent
		if e.Type != "reg" || seenFile[e] {
			return nil
		}
		seenFile[e] = true
		res.RegularFiles++
		return forEachChunk(r, e, func(ce *estargz.TOCEntry, data []byte) error {
			dv, err := v.Verifier(ce)
			if err != nil {
				return fmt.Errorf("%q: chunk at file offset %d: %w", e.Name, ce.ChunkOffset, err)
			}
			if _, err := dv.Write(data); err != nil {
				return err
			}
			if !dv.Verified() {
				return fmt.Errorf("%q: chunk at file offset %d (blob offset %d, %d bytes) does not match its digest", e.Name, ce.ChunkOffset, ce.Offset, len(data))
			}
			res.Chunks++
			res.Bytes += int64(len(data))
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	res.Seconds = time.Since(start).Seconds()

	// Number of entries in the TOC JSON as stored (chunk entries included).
	raw, err := readRawTOC(sr)
	if err != nil {
		return err
	}
	var toc struct {
		Entries []json.RawMessage `json:"entries"`
	}
	if err := json.Unmarshal(raw, &toc); err != nil {
		return fmt.Errorf("decoding TOC JSON: %w", err)
	}
	res.Entries = len(toc.Entries)
	return printJSON(res)
}

// ---------------------------------------------------------------- cat

func cmdCat(args []string) error {
	pos, err := parseFlags(newFlagSet("cat"), args, 2, "BLOB PATH")
	if err != nil {
		return err
	}
	f, sr, err := openSection(pos[0])
	if err != nil {
		return err
	}
	defer f.Close()
	r, err := estargz.Open(sr)
	if err != nil {
		return fmt.Errorf("estargz.Open: %w", err)
	}
	e, ok := r.Lookup(pos[1])
	if !ok {
		return fmt.Errorf("%q: not found", pos[1])
	}
	if e.Type != "reg" {
		return fmt.Errorf("%q: not a regular file (type %s)", pos[1], e.Type)
	}
	w := bufio.NewWriterSize(os.Stdout, 1<<20)
	if err := forEachChunk(r, e, func(_ *estargz.TOCEntry, data []byte) error {
		_, err := w.Write(data)
		return err
	}); err != nil {
		return err
	}
	return w.Flush()
}

// ---------------------------------------------------------------- ls

type lsEntry struct {
	Name     string `json:"name"`
	Type     string `json:"type"`
	Size     int64  `json:"size"`
	Mode     int64  `json:"mode"`
	LinkName string `json:"linkName"`
}

func cmdLs(args []string) error {
	pos, err := parseFlags(newFlagSet("ls"), args, 1, "BLOB")
	if err != nil {
		return err
	}
	f, sr, err := openSection(pos[0])
	if err != nil {
		return err
	}
	defer f.Close()
	r, err := estargz.Open(sr)
	if err != nil {
		return fmt.Errorf("estargz.Open: %w", err)
	}
	list := []lsEntry{}
	if err := walk(r, func(n node) error {
		list = append(list, lsEntry{
			Name:     n.path,
			Type:     n.ent.Type,
			Size:     n.ent.Size,
			Mode:     n.ent.Mode,
			LinkName: n.ent.LinkName,
		})
		return nil
	}); err != nil {
		return err
	}
	return printJSON(struct {
		Entries []lsEntry `json:"entries"`
	}{list})
}

// ---------------------------------------------------------------- read-latency

type latencyResult struct {
	Reads          int     `json:"reads"`
	Bytes          int64   `json:"bytes"`
	Seconds        float64 `json:"seconds"`
	OpenSeconds    float64 `json:"openSeconds"`
	SecondsPerRead float64 `json:"secondsPerRead"`
}

// cmdReadLatency opens a blob once, then reads one file N times through the
// Reader, checking every chunk against its digest, as a lazy pull reads a
// small file: it measures the cost of one read, not of opening.
func cmdReadLatency(args []string) error {
	fs := newFlagSet("read-latency")
	n := fs.Int("n", 100, "number of reads")
	pos, err := parseFlags(fs, args, 2, "BLOB PATH")
	if err != nil {
		return err
	}
	f, sr, err := openSection(pos[0])
	if err != nil {
		return err
	}
	defer f.Close()
	start := time.Now()
	r, err := estargz.Open(sr)
	if err != nil {
		return fmt.Errorf("estargz.Open: %w", err)
	}
	v, err := r.VerifyTOC(r.TOCDigest())
	if err != nil {
		return fmt.Errorf("VerifyTOC: %w", err)
	}
	e, ok := r.Lookup(pos[1])
	if !ok || e.Type != "reg" {
		return fmt.Errorf("%q: not a regular file in the blob", pos[1])
	}
	res := latencyResult{Reads: *n, OpenSeconds: time.Since(start).Seconds()}
	start = time.Now()
	for i := 0; i < *n; i++ {
		if err := forEachChunk(r, e, func(ce *estargz.TOCEntry, data []byte) error {
			dv, err := v.Verifier(ce)
			if err != nil {
				return err
			}
			if _, err := dv.Write(data); err != nil {
				return err
			}
			if !dv.Verified() {
				return fmt.Errorf("%q: chunk does not match its digest", e.Name)
			}
			res.Bytes += int64(len(data))
			return nil
		}); err != nil {
			return err
		}
	}
	res.Seconds = time.Since(start).Seconds()
	res.SecondsPerRead = res.Seconds / float64(*n)
	return printJSON(res)
}
