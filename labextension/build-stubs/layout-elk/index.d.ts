declare const layouts: any; export default layouts;
