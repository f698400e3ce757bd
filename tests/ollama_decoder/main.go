// Decodes request bodies the way Ollama does: Go's encoding/json into structs with Ollama's
// field tags (api.ChatRequest, api.GenerateRequest, ..., and the OpenAI- and
// Anthropic-compatible requests of its middleware), so the tests can compare what the gateway
// checked with what Ollama would run.
//
// Input, one JSON object per line on stdin: {"endpoint": "/api/chat", "body": "<raw body>"}.
// Output, one line per input: {"error": "..."} when Ollama would refuse the body, else the
// fields the gateway polices, as Ollama decoded them (null: absent).
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
)

type message struct {
	Role      string          `json:"role"`
	Content   json.RawMessage `json:"content"`
	Images    []string        `json:"images,omitempty"`
	ToolCalls json.RawMessage `json:"tool_calls,omitempty"`
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

// Ollama's native API (api/types.go).
type chatRequest struct {
	Model     string          `json:"model"`
	Messages  []message       `json:"messages"`
	Stream    *bool           `json:"stream,omitempty"`
	Format    json.RawMessage `json:"format,omitempty"`
	KeepAlive json.RawMessage `json:"keep_alive,omitempty"`
	Tools     json.RawMessage `json:"tools,omitempty"`
	Options   map[string]any  `json:"options"`
	Think     json.RawMessage `json:"think,omitempty"`
	Truncate  json.RawMessage `json:"truncate,omitempty"`
	Shift     json.RawMessage `json:"shift,omitempty"`
	Debug     json.RawMessage `json:"_debug_render_only,omitempty"`
	Logprobs  json.RawMessage `json:"logprobs,omitempty"`
	TopLogp   json.RawMessage `json:"top_logprobs,omitempty"`
}

type generateRequest struct {
	Model     string          `json:"model"`
	Prompt    string          `json:"prompt"`
	Suffix    string          `json:"suffix"`
	System    string          `json:"system"`
	Template  string          `json:"template"`
	Context   []int           `json:"context,omitempty"`
	Stream    *bool           `json:"stream,omitempty"`
	Raw       bool            `json:"raw,omitempty"`
	Format    json.RawMessage `json:"format,omitempty"`
	KeepAlive json.RawMessage `json:"keep_alive,omitempty"`
	Images    []string        `json:"images,omitempty"`
	Options   map[string]any  `json:"options"`
	Think     json.RawMessage `json:"think,omitempty"`
	Truncate  json.RawMessage `json:"truncate,omitempty"`
	Shift     json.RawMessage `json:"shift,omitempty"`
	Debug     json.RawMessage `json:"_debug_render_only,omitempty"`
	Logprobs  json.RawMessage `json:"logprobs,omitempty"`
	TopLogp   json.RawMessage `json:"top_logprobs,omitempty"`
}

type embedRequest struct {
	Model      string          `json:"model"`
	Input      any             `json:"input"`
	KeepAlive  json.RawMessage `json:"keep_alive,omitempty"`
	Truncate   *bool           `json:"truncate,omitempty"`
	Dimensions int             `json:"dimensions,omitempty"`
	Options    map[string]any  `json:"options"`
}

type embeddingRequest struct {
	Model     string          `json:"model"`
	Prompt    string          `json:"prompt"`
	KeepAlive json.RawMessage `json:"keep_alive,omitempty"`
	Options   map[string]any  `json:"options"`
}

type showRequest struct {
	Model    string         `json:"model"`
	System   string         `json:"system"`
	Template string         `json:"template"`
	Verbose  bool           `json:"verbose"`
	Options  map[string]any `json:"options"`
	Name     string         `json:"name"`
}

// Ollama's OpenAI-compatible middleware (openai/openai.go).
type openaiChatRequest struct {
	Model               string          `json:"model"`
	Messages            []message       `json:"messages"`
	Stream              *bool           `json:"stream"`
	StreamOptions       *streamOptions  `json:"stream_options"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	Temperature         *float64        `json:"temperature"`
	Tools               json.RawMessage `json:"tools"`
	ResponseFormat      json.RawMessage `json:"response_format"`
	Seed                json.RawMessage `json:"seed"`
	Stop                json.RawMessage `json:"stop"`
	FrequencyPenalty    json.RawMessage `json:"frequency_penalty"`
	PresencePenalty     json.RawMessage `json:"presence_penalty"`
	TopP                json.RawMessage `json:"top_p"`
	Reasoning           json.RawMessage `json:"reasoning,omitempty"`
	ReasoningEffort     json.RawMessage `json:"reasoning_effort,omitempty"`
	Logprobs            json.RawMessage `json:"logprobs"`
	TopLogprobs         json.RawMessage `json:"top_logprobs"`
	DebugRenderOnly     json.RawMessage `json:"_debug_render_only"`
}

type openaiCompletionRequest struct {
	Model         string          `json:"model"`
	Prompt        any             `json:"prompt"`
	MaxTokens     *int            `json:"max_tokens"`
	Stream        *bool           `json:"stream"`
	StreamOptions *streamOptions  `json:"stream_options"`
	Suffix        string          `json:"suffix"`
	Frequency     json.RawMessage `json:"frequency_penalty"`
	Presence      json.RawMessage `json:"presence_penalty"`
	Seed          json.RawMessage `json:"seed"`
	Stop          json.RawMessage `json:"stop"`
	Temperature   json.RawMessage `json:"temperature"`
	TopP          json.RawMessage `json:"top_p"`
	Logprobs      json.RawMessage `json:"logprobs"`
	Debug         json.RawMessage `json:"_debug_render_only"`
}

type openaiEmbedRequest struct {
	Input      any    `json:"input"`
	Model      string `json:"model"`
	Dimensions int    `json:"dimensions"`
}

type responsesRequest struct {
	Model           string `json:"model"`
	Input           any    `json:"input"`
	Instructions    string `json:"instructions"`
	MaxOutputTokens *int   `json:"max_output_tokens"`
	Stream          *bool  `json:"stream"`
}

// Ollama's Anthropic-compatible middleware.
type messagesRequest struct {
	Model     string    `json:"model"`
	MaxTokens int       `json:"max_tokens"`
	Messages  []message `json:"messages"`
	System    any       `json:"system"`
	Stream    *bool     `json:"stream"`
}

// What the gateway polices, as Ollama decoded it.
type view struct {
	Model               string          `json:"model"`
	Name                *string         `json:"name"`
	Stream              *bool           `json:"stream"`
	KeepAlive           json.RawMessage `json:"keep_alive"`
	NumPredict          any             `json:"num_predict"`
	NumCtx              any             `json:"num_ctx"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	MaxOutputTokens     *int            `json:"max_output_tokens"`
	IncludeUsage        *bool           `json:"include_usage"`
	Verbose             *bool           `json:"verbose"`
}

func decode(endpoint string, body []byte) (view, error) {
	var v view
	options := func(o map[string]any) {
		if o != nil {
			v.NumPredict, v.NumCtx = o["num_predict"], o["num_ctx"]
		}
	}
	usage := func(o *streamOptions) {
		if o != nil {
			v.IncludeUsage = &o.IncludeUsage
		}
	}
	switch endpoint {
	case "/api/chat":
		var r chatRequest
		if err := json.Unmarshal(body, &r); err != nil {
			return v, err
		}
		v.Model, v.Stream, v.KeepAlive = r.Model, r.Stream, r.KeepAlive
		options(r.Options)
	case "/api/generate":
		var r generateRequest
		if err := json.Unmarshal(body, &r); err != nil {
			return v, err
		}
		v.Model, v.Stream, v.KeepAlive = r.Model, r.Stream, r.KeepAlive
		options(r.Options)
	case "/api/embed":
		var r embedRequest
		if err := json.Unmarshal(body, &r); err != nil {
			return v, err
		}
		v.Model, v.KeepAlive = r.Model, r.KeepAlive
		options(r.Options)
	case "/api/embeddings":
		var r embeddingRequest
		if err := json.Unmarshal(body, &r); err != nil {
			return v, err
		}
		v.Model, v.KeepAlive = r.Model, r.KeepAlive
		options(r.Options)
	case "/api/show":
		var r showRequest
		if err := json.Unmarshal(body, &r); err != nil {
			return v, err
		}
		v.Model, v.Name, v.Verbose = r.Model, &r.Name, &r.Verbose
		options(r.Options)
	case "/v1/chat/completions":
		var r openaiChatRequest
		if err := json.Unmarshal(body, &r); err != nil {
			return v, err
		}
		v.Model, v.Stream, v.MaxTokens, v.MaxCompletionTokens = r.Model, r.Stream, r.MaxTokens, r.MaxCompletionTokens
		usage(r.StreamOptions)
	case "/v1/completions":
		var r openaiCompletionRequest
		if err := json.Unmarshal(body, &r); err != nil {
			return v, err
		}
		v.Model, v.Stream, v.MaxTokens = r.Model, r.Stream, r.MaxTokens
		usage(r.StreamOptions)
	case "/v1/embeddings":
		var r openaiEmbedRequest
		if err := json.Unmarshal(body, &r); err != nil {
			return v, err
		}
		v.Model = r.Model
	case "/v1/responses":
		var r responsesRequest
		if err := json.Unmarshal(body, &r); err != nil {
			return v, err
		}
		v.Model, v.Stream, v.MaxOutputTokens = r.Model, r.Stream, r.MaxOutputTokens
	case "/v1/messages":
		var r messagesRequest
		if err := json.Unmarshal(body, &r); err != nil {
			return v, err
		}
		v.Model, v.Stream, v.MaxTokens = r.Model, r.Stream, &r.MaxTokens
	default:
		return v, fmt.Errorf("no decoder for %s", endpoint)
	}
	return v, nil
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var req struct {
			Endpoint string `json:"endpoint"`
			Body     string `json:"body"`
		}
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			fmt.Fprintln(os.Stderr, "bad input line:", err)
			os.Exit(2)
		}
		v, err := decode(req.Endpoint, []byte(req.Body))
		if err != nil {
			out.Encode(map[string]string{"error": err.Error()})
		} else {
			out.Encode(v)
		}
	}
}
