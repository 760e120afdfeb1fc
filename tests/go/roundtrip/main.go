// The README's round trip from Go: grpc-go with the package protoc generates from proto/ as
// the README's "Calling it from Go" says (go_package kato.example/kato/v1), against a running
// server. tests/integration/test_go_client.py generates that package, builds this program
// from Debian's Go packages and runs it:
//
//	roundtrip 127.0.0.1:50051
//
// Prints one JSON line of what it saw; exits non-zero on anything unexpected.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	katov1 "kato.example/kato/v1"
)

// Status is a kato error's google.rpc.Status: its code, message and details.
type Status struct {
	Code       codes.Code
	Message    string
	ErrorInfo  *errdetails.ErrorInfo  // every kato error: Domain "kato.v1", Reason, Metadata
	BadRequest *errdetails.BadRequest // bad input: FieldViolations[i].Field names the field
}

// decodeStatus decodes the details grpc-go reads from the grpc-status-details-bin trailer.
func decodeStatus(err error) Status {
	st := status.Convert(err)
	out := Status{Code: st.Code(), Message: st.Message()}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			out.ErrorInfo = d
		case *errdetails.BadRequest:
			out.BadRequest = d
		}
	}
	return out
}

type event = []string

func events(in []*katov1.Event) []event {
	out := make([]event, 0, len(in))
	for _, e := range in {
		out = append(out, e.Symbols)
	}
	return out
}

type prediction struct {
	Pattern string  `json:"pattern"`
	Type    string  `json:"type"`
	Future  []event `json:"future"`
}

func top(predictions []*katov1.Prediction) (*prediction, error) {
	if len(predictions) == 0 {
		return nil, errors.New("no predictions")
	}
	p := predictions[0]
	return &prediction{Pattern: p.Pattern, Type: p.Type.String(), Future: events(p.Future)}, nil
}

type streamed struct {
	StmLength  int32       `json:"stm_length"`
	Time       int64       `json:"time"`
	Prediction *prediction `json:"prediction,omitempty"`
}

type decodedError struct {
	Code       codes.Code        `json:"code"`
	CodeName   string            `json:"code_name"`
	Message    string            `json:"message"`
	Domain     string            `json:"domain"`
	Reason     string            `json:"reason"`
	Metadata   map[string]string `json:"metadata"`
	Violations []string          `json:"violations"`
}

type report struct {
	Node        string            `json:"node"`
	Session     map[string]string `json:"session"`
	TTLSeconds  int32             `json:"ttl_seconds"`
	LearnStatus string            `json:"learn_status"`
	Pattern     string            `json:"pattern"`
	GotPattern  map[string]any    `json:"got_pattern"`
	Prediction  *prediction       `json:"prediction"`
	Stream      []streamed        `json:"stream"`
	Relearned   string            `json:"relearned"`
	Frequency   int64             `json:"frequency_after_stream"`
	StmLength   int32             `json:"stm_length"`
	Error       decodedError      `json:"error"`
}

func observe(ctx context.Context, client katov1.KatoServiceClient, session string, symbol string) (*katov1.ObserveResponse, error) {
	return client.Observe(ctx, &katov1.ObserveRequest{
		Name:        session,
		Observation: &katov1.Observation{Strings: []string{symbol}},
	})
}

// stream sends symbols over one ObserveStream and reads one response per observation.
func stream(ctx context.Context, client katov1.KatoServiceClient, session string, symbols []string) ([]streamed, error) {
	calls, err := client.ObserveStream(ctx)
	if err != nil {
		return nil, err
	}
	for i, s := range symbols {
		request := &katov1.ObserveStreamRequest{
			Name:              session,
			Observation:       &katov1.Observation{Strings: []string{s}},
			ReturnPredictions: i == 0,
		}
		if err := calls.Send(request); err != nil {
			return nil, err
		}
	}
	if err := calls.CloseSend(); err != nil {
		return nil, err
	}
	var out []streamed
	for {
		response, err := calls.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		seen := streamed{StmLength: response.StmLength, Time: response.Time}
		if len(response.Predictions) > 0 {
			seen.Prediction, _ = top(response.Predictions)
		}
		out = append(out, seen)
	}
	if len(out) != len(symbols) {
		return nil, fmt.Errorf("%d responses to %d observations", len(out), len(symbols))
	}
	return out, nil
}

func run(address string) (*report, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// grpc.WithInsecure: Debian bookworm's grpc-go (1.33) predates credentials/insecure.
	conn, err := grpc.DialContext(ctx, address, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	client := katov1.NewKatoServiceClient(conn)

	node := fmt.Sprintf("go-client-%d-%d", os.Getpid(), time.Now().UnixNano())
	recall := 0.1
	session, err := client.CreateSession(ctx, &katov1.CreateSessionRequest{Session: &katov1.Session{
		KnowledgeBase: "knowledgeBases/" + node,
		Config:        &katov1.SessionConfig{RecallThreshold: &recall},
	}})
	if err != nil {
		return nil, fmt.Errorf("CreateSession: %w", err)
	}
	for _, s := range []string{"hello", "world", "again"} {
		if _, err := observe(ctx, client, session.Name, s); err != nil {
			return nil, fmt.Errorf("Observe: %w", err)
		}
	}
	learned, err := client.Learn(ctx, &katov1.LearnRequest{Name: session.Name})
	if err != nil {
		return nil, fmt.Errorf("Learn: %w", err)
	}
	observed, err := observe(ctx, client, session.Name, "hello")
	if err != nil {
		return nil, fmt.Errorf("Observe: %w", err)
	}
	predictions, err := client.GetPredictions(ctx, &katov1.GetPredictionsRequest{Name: session.Name})
	if err != nil {
		return nil, fmt.Errorf("GetPredictions: %w", err)
	}
	best, err := top(predictions.Predictions)
	if err != nil {
		return nil, err
	}
	pattern, err := client.GetPattern(ctx, &katov1.GetPatternRequest{Name: learned.Pattern})
	if err != nil {
		return nil, fmt.Errorf("GetPattern: %w", err)
	}

	// The rest of the sequence over a stream; learning it again reinforces the same pattern.
	seen, err := stream(ctx, client, session.Name, []string{"world", "again"})
	if err != nil {
		return nil, fmt.Errorf("ObserveStream: %w", err)
	}
	relearned, err := client.Learn(ctx, &katov1.LearnRequest{Name: session.Name})
	if err != nil {
		return nil, fmt.Errorf("Learn: %w", err)
	}
	again, err := client.GetPattern(ctx, &katov1.GetPatternRequest{Name: relearned.Pattern})
	if err != nil {
		return nil, fmt.Errorf("GetPattern: %w", err)
	}

	_, err = observe(ctx, client, session.Name, strings.Repeat("x", 5000))
	if err == nil {
		return nil, errors.New("an oversized symbol was accepted")
	}
	decoded := decodeStatus(err)
	if decoded.ErrorInfo == nil || decoded.BadRequest == nil {
		return nil, fmt.Errorf("no ErrorInfo and BadRequest in %v", err)
	}
	violations := []string{}
	for _, v := range decoded.BadRequest.FieldViolations {
		violations = append(violations, v.Field)
	}

	return &report{
		Node:        node,
		Session:     map[string]string{"name": session.Name, "knowledge_base": session.KnowledgeBase},
		TTLSeconds:  session.TtlSeconds,
		LearnStatus: learned.Status.String(),
		Pattern:     learned.Pattern,
		GotPattern:  map[string]any{"name": pattern.Name, "frequency": pattern.Frequency},
		Prediction:  best,
		Stream:      seen,
		Relearned:   relearned.Pattern,
		Frequency:   again.Frequency,
		StmLength:   observed.StmLength,
		Error: decodedError{
			Code:       decoded.Code,
			CodeName:   decoded.Code.String(),
			Message:    decoded.Message,
			Domain:     decoded.ErrorInfo.Domain,
			Reason:     decoded.ErrorInfo.Reason,
			Metadata:   decoded.ErrorInfo.Metadata,
			Violations: violations,
		},
	}, nil
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: roundtrip HOST:PORT")
		os.Exit(2)
	}
	seen, err := run(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "roundtrip:", err)
		os.Exit(1)
	}
	line, err := json.Marshal(seen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "roundtrip:", err)
		os.Exit(1)
	}
	fmt.Println(string(line))
}
