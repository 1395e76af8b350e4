declare const mermaid: any; export default mermaid;
